"""phantomlens: see, explain and predict silent near-synonym failures in LM fine-tuning.

The formulas are this project's own definitions built on the abstract of Prakash & Dontabhaktuni,
"Phantom transitions in language model fine-tuning" (arXiv 2606.07559); see docs/method.md.
"""

__version__ = "0.1.0"

from phantomlens.classify import classify_geometry
from phantomlens.contexts import Context, builtin_contexts
from phantomlens.errors import PhantomLensError
from phantomlens.models import load_model
from phantomlens.predict import predict_critical_lr
from phantomlens.probe import PhantomCallback, Probe, StopRule
from phantomlens.readout import Readout, measure
from phantomlens.sweep import SweepConfig, sweep
from phantomlens.train import RunConfig, RunResult, finetune
from phantomlens.transitions import AnalysisConfig, analyze

__all__ = [
    "AnalysisConfig",
    "Context",
    "PhantomCallback",
    "PhantomLensError",
    "Probe",
    "Readout",
    "RunConfig",
    "RunResult",
    "StopRule",
    "SweepConfig",
    "__version__",
    "analyze",
    "builtin_contexts",
    "classify_geometry",
    "finetune",
    "load_model",
    "measure",
    "predict_critical_lr",
    "sweep",
]
