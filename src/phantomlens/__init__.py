"""phantomlens: see, explain and predict silent near-synonym failures in LM fine-tuning.

The formulas are this project's own definitions built on the abstract of Prakash & Dontabhaktuni,
"Phantom transitions in language model fine-tuning" (arXiv 2606.07559); see docs/method.md.

The public names are resolved on first use (PEP 562): ``import phantomlens`` loads no torch,
transformers, peft or pandas, so the command line and notebooks start fast; the module that
defines a name is imported when the name is first read.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from phantomlens.version import __version__

if TYPE_CHECKING:
    from phantomlens.callback import PhantomCallback
    from phantomlens.classify import classify_geometry
    from phantomlens.contexts import Context, builtin_contexts
    from phantomlens.errors import PhantomLensError
    from phantomlens.factpredict import predict_facts
    from phantomlens.factrun import FactSetResult
    from phantomlens.facts import Fact, fact_examples, load_facts
    from phantomlens.models import load_model
    from phantomlens.predict import predict_critical_lr
    from phantomlens.probe import Probe
    from phantomlens.readout import Readout, measure
    from phantomlens.rundir import RunResult
    from phantomlens.settings import AnalysisConfig, RunConfig, StopRule, SweepConfig
    from phantomlens.sweep import sweep
    from phantomlens.train import finetune
    from phantomlens.transitions import analyze

#: Public name → the module that defines it. Moving a name to another module is a one-line change
#: here (and its line in the TYPE_CHECKING block above, for type checkers).
_EXPORTS: dict[str, str] = {
    "AnalysisConfig": "phantomlens.settings",
    "Context": "phantomlens.contexts",
    "Fact": "phantomlens.facts",
    "FactSetResult": "phantomlens.factrun",
    "PhantomCallback": "phantomlens.callback",
    "PhantomLensError": "phantomlens.errors",
    "Probe": "phantomlens.probe",
    "Readout": "phantomlens.readout",
    "RunConfig": "phantomlens.settings",
    "RunResult": "phantomlens.rundir",
    "StopRule": "phantomlens.settings",
    "SweepConfig": "phantomlens.settings",
    "analyze": "phantomlens.transitions",
    "builtin_contexts": "phantomlens.contexts",
    "classify_geometry": "phantomlens.classify",
    "fact_examples": "phantomlens.facts",
    "finetune": "phantomlens.train",
    "load_facts": "phantomlens.facts",
    "load_model": "phantomlens.models",
    "measure": "phantomlens.readout",
    "predict_critical_lr": "phantomlens.predict",
    "predict_facts": "phantomlens.factpredict",
    "sweep": "phantomlens.sweep",
}

# Spelled out (not computed from _EXPORTS) so that type checkers and linters see the re-exports;
# tests/test_layering.py checks that it, _EXPORTS and the TYPE_CHECKING block agree.
__all__ = [
    "AnalysisConfig",
    "Context",
    "Fact",
    "FactSetResult",
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
    "fact_examples",
    "finetune",
    "load_facts",
    "load_model",
    "measure",
    "predict_critical_lr",
    "predict_facts",
    "sweep",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'phantomlens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later reads skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """The package module, guarding exports that share their name with a submodule (``sweep``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        # Loading ``phantomlens.sweep`` makes the import system bind the submodule to the package's
        # ``sweep`` attribute, which would hide the exported function for the rest of the process
        # (``from phantomlens import sweep`` would then return the module). Bind the export instead,
        # as the eager ``from phantomlens.sweep import sweep`` of earlier versions did.
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
