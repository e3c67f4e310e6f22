"""Every user-facing setting, declared once: the library's arguments and the CLI's flags.

Each class is a validated ``JsonConfig`` (see ``phantomlens.config``). Settings compose rather
than copy: a run holds its readout and stop-rule settings, a sweep holds the run settings its runs
share. Defaults that depend on other fields stay ``None`` in the config and are resolved where
they are used (``RunConfig.peak_lr``), so changing ``mode`` on an existing config also changes the
learning rate it trains at. This module imports nothing heavy: ``phantomlens --help`` reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from phantomlens.config import (
    FINITE,
    FRACTION,
    NON_NEGATIVE,
    OPEN_FRACTION,
    POSITIVE,
    UNIT_INTERVAL,
    Check,
    JsonConfig,
    at_least,
    at_most,
    both,
    group,
    option,
)
from phantomlens.errors import PhantomLensError

DEFAULT_MODEL = "smollm2-135m"

#: Default peak LR per mode: chosen so that the default context flips mid-run on SmolLM2-135M
#: (full: flip at step 22 of 50; LoRA: step 32), which shows the regime phantomlens is about.
DEFAULT_LR = {"full": 1e-6, "lora": 1e-4}

#: The longest run accepted: a trajectory row per step is kept in memory.
MAX_STEPS = 100_000

#: Probability mass the top-k spectrum covers, and the largest k it may use.
SPECTRAL_MASS = 0.999
SPECTRAL_TOPK = 1024

MODES = ("full", "lora")
SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("adamw", "sgd")
#: How a sweep searches η_c (docs/critical-lr.md): on the final margin, or on the verdict alone.
SEARCHES = ("root", "bisect")


@dataclass
class ReadoutConfig(JsonConfig):
    """How the density-matrix readout is taken."""

    center: bool = option(False, "centred token states (subtract the mean embedding) instead of raw")
    spectral_mass: float = option(
        SPECTRAL_MASS, "probability mass the top-k spectrum must cover", check=UNIT_INTERVAL
    )
    spectral_topk: int = option(
        SPECTRAL_TOPK,
        "largest k for purity and entropy (fact-set runs: at most 64 per fact); 0 skips them "
        "(the cheapest readout)",
        check=at_least(0),
    )


@dataclass
class StopRule(JsonConfig):
    """When the flip counts as secure: every watched context keeps ``margin ≥ margin_safe`` for
    ``patience`` consecutive observations."""

    margin_safe: float = option(
        1.0,
        "early stopping: margin (logits) every context must keep: p_target ≥ e·p_competitor",
        check=FINITE,
    )
    patience: int = option(
        3, "early stopping: consecutive observations the margin must hold", check=at_least(1)
    )

    @property
    def caveat(self) -> str:
        """What a stop reason must add when ``margin_safe`` ≤ 0: 'secure' then includes contexts
        whose target has not overtaken its competitor (allowed: it makes the rule's mechanics testable)."""
        return "" if self.margin_safe > 0 else " (margin_safe ≤ 0: this counts unflipped targets as secure)"

    def secure(self, margins: Iterable[float]) -> bool:
        """Whether one observation is secure: every watched margin ≥ margin_safe (NaN is not)."""
        return all(m >= self.margin_safe for m in margins)

    def next_streak(self, streak: int, margins: Iterable[float]) -> int:
        """The count of consecutive secure observations after one more observation."""
        return streak + 1 if self.secure(margins) else 0

    def first_secure_step(self, margins: Sequence[float] | Sequence[Sequence[float]]) -> int | None:
        """Index of the observation at which this rule stops training, or None if it never does.

        ``margins[t]`` is observation t: one margin, or one per watched context. The same rule
        ``Probe.record`` applies as training goes, so a recorded trajectory can be asked where the
        rule would have stopped it.
        """
        streak = 0
        for t, observed in enumerate(margins):
            streak = self.next_streak(streak, observed if isinstance(observed, Iterable) else [observed])
            if streak >= self.patience:
                return t
        return None


@dataclass
class RunConfig(JsonConfig):
    """Settings of one instrumented fine-tuning run. Every field is also a ``phantomlens run`` flag."""

    model: str = option(DEFAULT_MODEL, "built-in model name, local HF directory, .gguf file or hub id")
    context: str | None = option(
        None, "a built-in context name (see `phantomlens contexts`) or the context text itself"
    )
    target: str | None = option(
        None, "the correct continuation: a word or an answer of several tokens (leading space added)"
    )
    competitor: str | None = option(
        None,
        "the answer to beat; omitted: picked by the documented rule (single-token targets only)",
    )
    facts: str | None = option(
        None,
        "a fact file (.jsonl or .csv: prompt, target, competitor, name, chat) whose facts are "
        "trained jointly, instead of one context (docs/facts.md)",
    )
    chat: bool = option(
        False, "wrap the context (every fact's prompt) in the tokenizer's chat template as a user message"
    )
    micro_batch: int = option(
        32,
        "facts per forward pass in a fact-set run; gradients accumulate, so each step is still one "
        "step on the mean loss of all facts",
        check=both(at_least(1), at_most(4096)),
    )
    mode: str = option("full", "train all weights, or LoRA adapters only", choices=MODES)
    lr: float | None = option(
        None, "peak learning rate η (default: 1e-6 full, 1e-4 LoRA, resolved from --mode)", check=POSITIVE
    )
    steps: int = option(50, "number of optimiser steps T", check=both(at_least(1), at_most(MAX_STEPS)))
    schedule: str = option(
        "cosine",
        "cosine: linear warm-up then cosine decay to 0; linear: linear warm-up then linear decay to 0 "
        "(HF Trainer's default); constant",
        choices=SCHEDULES,
    )
    warmup_fraction: float = option(
        0.1, "fraction of the steps spent in linear warm-up (cosine, linear)", check=FRACTION
    )
    optimizer: str = option("adamw", "optimiser", choices=OPTIMIZERS)
    weight_decay: float = option(0.0, "AdamW weight decay", check=NON_NEGATIVE)
    momentum: float = option(0.0, "SGD momentum", check=FRACTION)
    seed: int = option(0, "random seed (LoRA initialisation)", check=both(at_least(0), at_most(2**63 - 1)))
    lora_r: int = option(8, "LoRA rank", check=at_least(1))
    lora_alpha: float = option(16.0, "LoRA alpha", check=POSITIVE)
    lora_target_modules: list[str] | None = option(
        None, "LoRA target modules (default: PEFT's attention q/v projections for the architecture)"
    )
    diverge_loss: float | None = option(
        None,
        "loss above which the run counts as diverged (default: max(2 ln V, 2 × initial loss))",
        check=POSITIVE,
    )
    trust_remote_code: bool = option(False, "allow a hub model's own code to run (off by default)")
    device: str = option(
        "auto",
        "where a model phantomlens loads runs: auto (CUDA when visible), cpu, cuda, cuda:N; "
        "a model passed in stays where it is",
    )
    early_stop: bool = option(
        False, "stop once the flip is secure (margin ≥ --margin-safe for --patience steps)"
    )
    precision: str = option(
        "fp32",
        "fp32, or bf16: train under bfloat16 autocast with the LM head, the logits and the readout "
        "kept in fp32",
        choices=("fp32", "bf16"),
    )
    readout: ReadoutConfig = group(ReadoutConfig, "how the readout is taken")
    stop: StopRule = group(StopRule, "when the flip counts as secure (with --early-stop)")

    @property
    def peak_lr(self) -> float:
        """The learning rate this run trains at: ``lr``, or the default of its ``mode``."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    def resolved(self) -> RunConfig:
        """A copy with every use-time default filled in, as records store it."""
        return self.replace(lr=self.peak_lr)


#: RunConfig fields a sweep sets per run, so its flags do not offer them (``facts`` is the sweep's
#: own setting: per fact, or the whole set jointly).
PER_RUN_FIELDS = ("context", "target", "competitor", "facts", "lr", "early_stop", "stop")


@dataclass
class SweepConfig(JsonConfig):
    """A critical-LR sweep: the run settings its runs share, how η_c is searched, where runs go."""

    run: RunConfig = group(RunConfig, "the settings every run of the sweep shares")
    contexts: list[str] | None = option(
        None, "built-in context names (default: all built-in contexts; your own contexts: --facts)"
    )
    # Not ``facts``: that name is the run's own fact file (every fact trained in each run).
    fact_file: str | None = option(
        None,
        "a fact file (.jsonl or .csv: prompt, target, competitor, name, chat; docs/facts.md): measure "
        "η_c of every fact, each trained alone, instead of built-in contexts (with --joint: one "
        "η_c(F, q) of the whole set trained jointly); your own single pair is a file of one line",
        flag="--facts",
    )
    joint: bool = option(
        False, "with --facts: every run trains all facts jointly; measure η_c(F, q) of the set"
    )
    quantile: float = option(
        1.0,
        "with --joint: the fraction q of the facts that must end flipped for a run to succeed",
        check=UNIT_INTERVAL,
    )
    search: str = option(
        "root",
        "how η_c is searched: root, root-finding on each run's final margin in log-LR (secant and "
        "quadratic steps, about 4 runs); bisect, bisection on success/failure alone (about 10)",
        choices=SEARCHES,
    )
    tolerance: float = option(
        0.01, "stop when the bracket's high/low ratio is ≤ 1 + tolerance", check=OPEN_FRACTION
    )
    factor: float = option(
        4.0,
        "bracketing step: multiply or divide the LR by this until the outcome changes",
        check=Check(lambda v: math.isfinite(v) and v > 1, "a finite number above 1"),
    )
    start_lr: float | None = option(
        None, "first LR tried (default: the κ = 1 prediction, else the mode's default)", check=POSITIVE
    )
    min_lr: float = option(1e-10, "never try below this LR", check=POSITIVE)
    max_lr: float = option(10.0, "never try above this LR", check=POSITIVE)
    eta_max: bool = option(True, "also bisect the divergence limit η_max")
    refresh_predictions: bool = option(
        False,
        "make again each stored prediction that predates the replay variant (so that calibrating "
        "the directory fits the replay's κ); off: a resumed sweep keeps its predictions",
    )
    grid: list[float] | None = option(
        None,
        "run exactly these peak LRs on every context (a phase diagram, DIR/grid.parquet) "
        "instead of searching η_c",
        check=POSITIVE,
    )
    backend: str = option("local", "where runs execute", choices=("local", "ray"))
    workers: int | None = option(
        None,
        "parallel runs (default: one per two CPU cores; OMP_NUM_THREADS, when set, caps the cores used)",
        check=both(at_least(1), at_most(256)),
    )

    def validate(self) -> None:
        self._validate_subject()
        if self.min_lr >= self.max_lr:
            raise PhantomLensError(f"min_lr ({self.min_lr:g}) must be below max_lr ({self.max_lr:g})")
        if self.start_lr is not None and not self.min_lr <= self.start_lr <= self.max_lr:
            raise PhantomLensError(
                f"start_lr ({self.start_lr:g}) must lie within [min_lr, max_lr] "
                f"= [{self.min_lr:g}, {self.max_lr:g}]"
            )

    def _validate_subject(self) -> None:
        """What a sweep measures is one of: built-in contexts, each fact alone, or the set jointly."""
        if self.fact_file is not None and not self.fact_file.strip():
            raise PhantomLensError("fact_file (--facts) is empty; give a .jsonl or .csv fact file")
        if self.fact_file is not None and self.contexts is not None:
            raise PhantomLensError("give --facts or --contexts, not both: a sweep measures one kind")
        if self.joint and self.fact_file is None:
            raise PhantomLensError("--joint needs --facts FILE: it trains the facts of that file jointly")
        if self.quantile != 1.0 and not self.joint:
            raise PhantomLensError("--quantile goes with --joint (the fraction of the set that must flip)")
        if self.run.facts is not None:
            # The run's own fact file would silently replace every run's context.
            raise PhantomLensError(
                "a sweep takes its fact file as fact_file (--facts FILE), not as run.facts"
            )


#: RunConfig fields the η_c prediction never reads, so ``phantomlens predict`` offers no flag for them.
PREDICT_IGNORES = ("lr", "early_stop", "stop", "readout", "diverge_loss", "weight_decay", "momentum")


@dataclass
class AnalysisConfig(JsonConfig):
    """Named thresholds of the transitions analysis. Each is stated in every analysis it produced."""

    jump_min_abs: float = option(
        0.05, "a jump's |ΔΦ| must be at least this (Φ lies in [-1, 1])", check=NON_NEGATIVE
    )
    jump_min_z: float = option(
        3.5,
        "…and at least this robust z-score against the run's step-to-step |ΔΦ| (median/MAD)",
        check=NON_NEGATIVE,
    )
    jump_min_share: float = option(
        0.4,
        "…and be sudden: at least this share of the total |ΔΦ| within ±jump_context steps",
        check=UNIT_INTERVAL,
    )
    jump_context: int = option(
        2, "steps on each side of a jump that its suddenness is judged against", check=at_least(1)
    )
    jump_max_window: int = option(2, "longest window of steps one jump may span (1 or 2)", choices=(1, 2))
    phantom_fraction: float = option(
        0.9, "a jump is a phantom when the readout part carries |R| ≥ this × |ΔΦ|", check=POSITIVE
    )
    symmetry_ratio: float = option(
        3.0,
        "symmetry breaking is flagged when |ΔG_cn| or ‖Δê‖ per unit LR at a jump exceeds this × its "
        "median over the steps before the jump",
        check=POSITIVE,
    )
    drag_worsening: float = option(
        0.005,
        "structural failure: the drag fell by more than this from step 0 to the end",
        check=NON_NEGATIVE,
    )
    silent_loss_drop: float = option(
        0.1, "silent failure: no flip although the loss fell by at least this fraction", check=FRACTION
    )
