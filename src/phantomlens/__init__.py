"""phantomlens: see, explain and predict silent near-synonym failures in LM fine-tuning.

The formulas are this project's own definitions built on the abstract of Prakash & Dontabhaktuni,
"Phantom transitions in language model fine-tuning" (arXiv 2606.07559); see docs/method.md.
"""

__version__ = "0.1.0"

from phantomlens.contexts import Context, builtin_contexts
from phantomlens.errors import PhantomLensError
from phantomlens.models import load_model
from phantomlens.readout import Readout, measure
from phantomlens.train import RunConfig, RunResult, finetune

__all__ = [
    "Context",
    "PhantomLensError",
    "Readout",
    "RunConfig",
    "RunResult",
    "__version__",
    "builtin_contexts",
    "finetune",
    "load_model",
    "measure",
]
