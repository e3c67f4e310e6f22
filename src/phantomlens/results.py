"""Typed stored results: a run's summary.json and events.json, a sweep's run records and summary.

Each file has one dataclass with a JSON round trip in the PEFT-config style, ``from_dict(d)`` and
``to_dict()``, such that ``X.from_dict(d).to_dict() == d`` for every file phantomlens has written.
Construction validates every field against its annotation (and its allowed values), so a result
that exists is a well-formed one; a bad field is a ``PhantomLensError`` that names it.

Compatibility rules, in both directions:

* fields added after files were first written (``newer()`` fields) default to ``None`` when a file
  predates them and are then left out of ``to_dict()``, so an old file reads and rewrites as it was;
* keys this version does not know are kept in ``extra`` and written back after the known ones, so a
  file from a newer phantomlens is never silently truncated by an older one;
* a missing required key, a wrong type or an unknown value of a closed set (``status``,
  ``outcome``, ``verdict``) fails loudly. ``transitions.Jump`` and ``transitions.Outcome`` are reused
  as they are and have no ``extra``: an unknown key inside a jump fails loudly too.

Nested run and sweep settings (``RunSummary.config``, ``SweepRunRecord.run``, ``SweepSummary.config``)
stay the plain dicts that were written, because their layout changed between versions (flat, then
grouped); ``run_config()`` parses them into a ``RunConfig`` when wanted.

Nothing heavy is imported here: pandas (the trajectory) and the transitions module (``Jump``,
``Outcome``, which need numpy and pandas) are imported by the functions that need them.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from phantomlens.atomic import read_json, strict_json, write_json_atomic
from phantomlens.errors import PhantomLensError, listed

if TYPE_CHECKING:
    import pandas as pd

    from phantomlens.settings import RunConfig
    from phantomlens.transitions import Jump, Outcome

__all__ = [
    "DIVERGED",
    "FAILURE",
    "SUCCESS",
    "FrozenGeometry",
    "RunContext",
    "RunEvents",
    "RunSummary",
    "StoredResult",
    "SweepRunRecord",
    "SweepSummary",
    "find_run_dirs",
    "load_run_dir",
    "load_run_events",
    "load_run_summary",
    "load_sweep_record",
    "load_sweep_records",
    "load_sweep_summary",
    "load_trajectory",
    "verdict_of",
]

CONFIG_FILE = "config.json"
TRAJECTORY_FILE = "trajectory.parquet"
SUMMARY_FILE = "summary.json"
EVENTS_FILE = "events.json"
PLOT_FILE = "trajectory.png"
SWEEP_CONFIG_FILE = "sweep.json"
RECORD_PATTERN = "lr=*.json"

#: A sweep run's verdict: what its outcome means to the search for η_c.
SUCCESS, FAILURE, DIVERGED = "success", "failure", "diverged"
STATUSES = ("completed", "diverged")
OUTCOMES = ("success", "kinematic", "structural", "diverged")


def newer(default: Any = None) -> Any:
    """A field added after files were first written: ``None`` (and not written) when a file lacks it."""
    return field(default=default, metadata={"newer": True})


def one_of(*choices: str) -> Any:
    """A required string field restricted to ``choices``."""
    return field(metadata={"choices": choices})


# --- validation -----------------------------------------------------------------------------------


def _words(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _scalar(value: Any, tp: type, path: str) -> Any:
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # as the JSON writer does: numpy scalars are plain numbers on disk
    if tp is float and value is None:
        return math.nan  # strict JSON writes a number that is not defined (NaN) as null
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)  # float(x) is x for a float, so NaN keeps its identity (and equality)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise PhantomLensError(f"{path} must be {_words(tp)}, got {value!r}")


def _union(value: Any, args: tuple, path: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise PhantomLensError(f"{path} must be given (it cannot be null)")
    error = None
    for option in (a for a in args if a is not type(None)):
        try:
            return _convert(value, option, path)
        except PhantomLensError as exc:
            error = error or exc
    raise error or PhantomLensError(f"{path} has no usable type")


def _container(value: Any, tp: Any, path: str) -> Any:
    origin, args = typing.get_origin(tp) or tp, typing.get_args(tp)
    if origin is list:
        if not isinstance(value, list):
            raise PhantomLensError(f"{path} must be a list, got {value!r}")
        item = args[0] if args else Any
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, dict):
        raise PhantomLensError(f"{path} must be an object, got {value!r}")
    item = args[1] if args else Any
    return {k: _convert(v, item, f"{path}.{k}") for k, v in value.items()}


def _convert(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked against the annotation ``tp`` (and nested results built from dicts)."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _union(value, typing.get_args(tp), path)
    if value is None and tp is not float:  # a null number is NaN: see _scalar
        raise PhantomLensError(f"{path} must be given (it cannot be null)")
    if origin in (list, dict) or tp in (list, dict):
        return _container(value, tp, path)
    if isinstance(tp, type) and issubclass(tp, StoredResult):
        return value if isinstance(value, tp) else tp.from_dict(value, where=path)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else _foreign(tp, value, path)
    return _scalar(value, tp, path)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        local = cls._lazy_names() if isinstance(cls, type) and issubclass(cls, StoredResult) else {}
        _HINTS[cls] = typing.get_type_hints(cls, localns=local)
    return _HINTS[cls]


def _foreign(cls: type, value: Any, path: str) -> Any:
    """A dataclass defined elsewhere (``Jump``, ``Outcome``), built strictly from its dict."""
    if not isinstance(value, dict):
        raise PhantomLensError(f"{path} must be an object, got {value!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in value if k not in names]
    missing = [n for n in names if n not in value]
    if unknown or missing:
        raise PhantomLensError(
            f"{path} does not match {cls.__name__}"
            + (f"; unknown keys: {', '.join(unknown)}" if unknown else "")
            + (f"; missing keys: {', '.join(missing)}" if missing else "")
        )
    hints = _hints(cls)
    return cls(**{n: _convert(value[n], hints[n], f"{path}.{n}") for n in names})


def _plain(value: Any) -> Any:
    """The JSON-ready form of a field value (a fresh copy: the result's state is not shared)."""
    if isinstance(value, StoredResult):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# --- the base class -------------------------------------------------------------------------------


@dataclass(kw_only=True)
class StoredResult:
    """A stored JSON result: validated on construction, ``from_dict``/``to_dict`` round trip."""

    #: Keys of the file this version does not know, kept so that rewriting loses nothing.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    what: ClassVar[str] = "result"

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in self._fields():
            value = _convert(getattr(self, f.name), hints[f.name], f"{self.what}: {f.name}")
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise PhantomLensError(
                    f"{self.what}: {f.name} must be one of {', '.join(choices)}, got {value!r}"
                )
            setattr(self, f.name, value)
        if not isinstance(self.extra, dict):
            raise PhantomLensError(f"{self.what}: extra must be an object, got {self.extra!r}")
        self.validate()

    def validate(self) -> None:
        """Checks across fields; single fields are checked against their annotations."""

    @classmethod
    def _lazy_names(cls) -> dict[str, Any]:
        """Names the annotations use that are imported lazily (to keep this module light)."""
        return {}

    @classmethod
    def _fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str | None = None) -> Self:
        """Build from a parsed JSON object; ``where`` (a path) prefixes every error message."""
        where = where or cls.what
        if not isinstance(data, Mapping):
            raise PhantomLensError(f"{where} must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in cls._fields()}
        required = [f.name for f in cls._fields() if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise PhantomLensError(f"{where} lacks {', '.join(missing)}; it is not a {cls.what}")
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        try:
            return cls(**known, extra=extra)
        except PhantomLensError as exc:
            message = str(exc).removeprefix(f"{cls.what}: ")
            raise PhantomLensError(f"{where}: {message}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, in field order; ``newer`` fields a file never had are left out."""
        out = {}
        for f in self._fields():
            value = getattr(self, f.name)
            if value is None and f.metadata.get("newer"):
                continue
            out[f.name] = _plain(value)
        for key, value in self.extra.items():
            out.setdefault(key, _plain(value))
        return out

    def to_json(self) -> str:
        """Strict JSON (a NaN field is null), as written to disk."""
        return strict_json(self.to_dict()).rstrip("\n")

    def write(self, path: str | Path) -> Path:
        """Write atomically as JSON (the layout every phantomlens result file has)."""
        write_json_atomic(Path(path), self.to_dict())
        return Path(path)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


# --- a run directory ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RunContext(StoredResult):
    """The context a run resolved to (``summary.json`` → ``context``)."""

    what: ClassVar[str] = "run context"
    text: str
    target: str
    competitor: str
    target_id: int
    competitor_id: int
    n_context_tokens: int


@dataclass(kw_only=True)
class RunSummary(StoredResult):
    """A run's ``summary.json``: ``train.summarize`` plus ``transitions.summary_fields``."""

    what: ClassVar[str] = "run summary"
    status: str = one_of(*STATUSES)
    status_reason: str
    diverged_step: int | None
    stopped_early: bool
    flipped: bool
    flip_step: int | None
    flipped_at_end: bool
    steps_completed: int
    margin_initial: float
    margin_final: float
    loss_initial: float
    loss_final: float
    p_target_final: float
    p_competitor_final: float
    phi_initial: float
    phi_final: float
    overlap_tc_initial: float
    embedding_sha256_start: str
    embedding_sha256_end: str
    embeddings_unchanged: bool
    geometry: str = one_of("raw", "centred")
    diverge_loss_cutoff: float | None
    context: RunContext
    vocab_size: int
    device: str | None = newer()
    device_name: str | None = newer()  # the accelerator's own name (cuda): which card took wall_time_s
    trainable_parameters: int
    wall_time_s: float
    notes: list[str]
    config: dict[str, Any]  # the RunConfig as written (flat before groups existed): run_config()
    versions: dict[str, str]
    # From the transitions analysis (transitions.summary_fields):
    outcome: str = one_of(*OUTCOMES)
    silent: bool
    n_jumps: int
    n_phantom_jumps: int
    analysis_thresholds: dict[str, int | float]
    stop_reason: str | None = newer()
    out_dir: str | None = newer()

    def validate(self) -> None:
        if self.embeddings_unchanged != (self.embedding_sha256_start == self.embedding_sha256_end):
            raise PhantomLensError(f"{self.what}: embeddings_unchanged contradicts the recorded hashes")
        try:
            self.run_config()
        except PhantomLensError as exc:
            raise PhantomLensError(f"{self.what}: config is not a valid run configuration ({exc})") from None

    def run_config(self) -> RunConfig:
        """The run's settings as a validated ``RunConfig`` (either stored layout)."""
        from phantomlens.settings import RunConfig

        return RunConfig.from_dict(self.config)

    def analysed(self, events: RunEvents) -> RunSummary:
        """This summary with the fields its analysis gives (``transitions.summary_fields``, typed)."""
        return self.replace(
            outcome=events.outcome,
            silent=events.silent,
            n_jumps=events.n_jumps,
            n_phantom_jumps=events.n_phantom_jumps,
            analysis_thresholds=dict(events.thresholds),
        )


@dataclass(kw_only=True)
class FrozenGeometry(StoredResult):
    """``events.json`` → ``frozen_geometry``: unchanged embedding hashes imply Γ = X = 0 exactly."""

    what: ClassVar[str] = "frozen-geometry check"
    embeddings_unchanged: bool
    embedding_sha256: str
    geometric_and_cross_exactly_zero: bool
    consistent: bool


@dataclass(kw_only=True)
class RunEvents(StoredResult):
    """A run's ``events.json``: ``transitions.analyze``, with its jumps as ``transitions.Jump``."""

    what: ClassVar[str] = "run events"
    outcome: str = one_of(*OUTCOMES)
    silent: bool
    outcome_detail: Outcome
    n_jumps: int
    n_phantom_jumps: int
    n_symmetry_breaking_jumps: int
    median_abs_prediction_error: float | None
    frozen_geometry: FrozenGeometry
    jumps: list[Jump]
    thresholds: dict[str, int | float]

    @classmethod
    def _lazy_names(cls) -> dict[str, Any]:
        from phantomlens.transitions import Jump, Outcome

        return {"Jump": Jump, "Outcome": Outcome}

    def validate(self) -> None:
        counts = {
            "n_jumps": len(self.jumps),
            "n_phantom_jumps": sum(j.phantom for j in self.jumps),
            "n_symmetry_breaking_jumps": sum(j.symmetry_breaking for j in self.jumps),
        }
        for name, count in counts.items():
            if getattr(self, name) != count:
                raise PhantomLensError(
                    f"{self.what}: {name} is {getattr(self, name)} but the jumps give {count}"
                )
        if self.outcome != self.outcome_detail.outcome or self.silent != self.outcome_detail.silent:
            raise PhantomLensError(f"{self.what}: outcome/silent contradict outcome_detail")


# --- a prediction ----------------------------------------------------------------------------------

#: The prediction variants, cheapest first (docs/critical-lr.md).
VARIANTS = ("first-order", "simulated", "two-point", "replay")
#: The variant a prediction uses unless asked: the most accurate on held-out models in the stored
#: blind test, in both modes (docs/critical-lr.md, "Blind test"). tests/test_predict.py checks that
#: the shipped calibration's blind test still ranks it first in every mode it covers.
DEFAULT_VARIANT = "replay"
#: Where the headline falls back, in order, when its variant has no root (first-order always has one
#: where any has).
FALLBACK_VARIANTS = ("replay", "two-point", "first-order")
#: The replay's gradient measurements unless asked (phantomlens.replay).
DEFAULT_REFRESHES = 6


@dataclass(kw_only=True)
class Prediction(StoredResult):
    """η̂_c and what it was computed from (``predict_critical_lr``; a sweep's ``predictions/*.json``)."""

    what: ClassVar[str] = "prediction"
    eta_c: float | None  # the chosen variant's η̂_c; None when A ≤ 0 (the margin does not move up)
    variant: str = one_of(*VARIANTS)
    eta_c_first_order: float | None  # −m_0 / (κ·A·Σ s_t)
    eta_c_simulated: float | None  # from the simulated margin path (Adam's step decay), κ = 1
    eta_c_two_point: float | None  # with the margin velocity re-measured mid-way, κ = 1
    margin_velocity_mid: float | None  # A re-measured after a sign step to the mid-run displacement
    margin_initial: float  # m_0 (negative: the competitor leads)
    margin_velocity: float  # A, the margin change per step per unit LR at step 0
    schedule_sum: float  # Σ_t s_t over the T steps
    kappa: float
    kappa_source: str
    passes: dict[str, int]  # forward / backward passes spent (every variant is computed: 3 + 4)
    mode: str
    optimizer: str
    steps: int
    schedule: str  # cosine, linear, constant, or "explicit" (factors given by the caller)
    model: str
    context: dict[str, Any]
    # Added with "predict for use" (docs/critical-lr.md); absent from older files.
    warmup_fraction: float | None = newer()
    eta_c_low: float | None = newer()  # η̂_c·exp(−σ), σ the calibration's std of log κ
    eta_c_high: float | None = newer()  # η̂_c·exp(+σ)
    kappa_log_std: float | None = newer()  # σ; None when κ is given or uncalibrated (no interval)
    kappa_note: str | None = newer()  # the calibration's domain: inside, outside (κ = 1), not recorded
    variant_note: str | None = newer()  # why the variant is not the one asked for, or has no root
    margin_safe: float | None = newer()  # the final margin the recommended LR reaches
    eta_recommended: float | None = newer()  # smallest η: final margin ≥ margin_safe at κ·e^−σ
    two_point_quadratic: float | None = newer()  # G·Σ s_t P_t: m_T = m_0 + η·A·Σs + η²·this (κ = 1)
    margin_curve: dict[str, list[float]] | None = newer()  # predicted final margin per LR (--plot)
    precision_note: str | None = newer()  # a bf16 run: what the fp32 arithmetic of the prediction misses
    # Added with the replay variant (docs/critical-lr.md); absent from older files.
    eta_c_replay: float | None = newer()  # the run replayed with K gradient measurements, κ = 1
    replay_refreshes: int | None = newer()  # K
    replay_points: list[list] | None = newer()  # [η, m_T, gradients measured] of each replay, in order
    # Each replay also costs T optimiser steps, which on a CPU can cost more than all the passes.
    replay_optimizer_steps: int | None = newer()

    def replays_run(self) -> int:
        """How many replays (each T optimiser steps) the prediction ran: the measured ones, and one
        per forward pass beyond the closed forms' 3 and the gradient measurements."""
        if not self.replay_refreshes:
            return 0
        measured = sum(1 for point in self.replay_points or [] if point[2])
        return measured + self.passes["forward"] - 3 - (self.passes["backward"] - 4)

    def validate(self) -> None:
        if self.margin_curve is not None and (
            set(self.margin_curve) != {"lr", "margin"}
            or len(self.margin_curve["lr"]) != len(self.margin_curve["margin"])
        ):
            raise PhantomLensError(f"{self.what}: margin_curve needs lr and margin lists of one length")
        # A sweep starts its search at these and a calibration divides by them: a negative or
        # infinite one would poison both without a word.
        for name in PREDICTED_LRS:
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise PhantomLensError(
                    f"{self.what}: {name} must be a learning rate ≥ 0 or null, got {value!r}"
                )
        if not (math.isfinite(self.kappa) and self.kappa > 0):
            raise PhantomLensError(f"{self.what}: kappa must be a positive number, got {self.kappa!r}")
        for point in self.replay_points or []:
            if not _replay_point(point):
                raise PhantomLensError(
                    f"{self.what}: each replay point must be [lr > 0, final margin, measured: true/false], "
                    f"got {point!r}"
                )


#: The learning rates a stored prediction holds.
PREDICTED_LRS = (
    "eta_c",
    "eta_c_first_order",
    "eta_c_simulated",
    "eta_c_two_point",
    "eta_c_replay",
    "eta_c_low",
    "eta_c_high",
    "eta_recommended",
)


def _replay_point(point: Any) -> bool:
    if not (isinstance(point, list) and len(point) == 3 and isinstance(point[2], bool)):
        return False
    eta, margin = point[:2]
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (eta, margin))
    return numbers and math.isfinite(eta) and eta > 0 and math.isfinite(margin)


# --- a sweep directory ----------------------------------------------------------------------------


def verdict_of(outcome: str) -> str:
    """What a run's outcome means to the search: success, diverged, or any other failure."""
    return {"success": SUCCESS, "diverged": DIVERGED}.get(outcome, FAILURE)


@dataclass(kw_only=True)
class SweepRunRecord(StoredResult):
    """One finished run of a sweep: ``DIR/runs/<model>/<mode>/<context>/lr=<η>.json``."""

    what: ClassVar[str] = "sweep run record"
    lr: float
    verdict: str = one_of(SUCCESS, FAILURE, DIVERGED)
    outcome: str = one_of(*OUTCOMES)
    silent: bool
    status: str = one_of(*STATUSES)
    flipped: bool
    flip_step: int | None
    flipped_at_end: bool
    steps_completed: int
    margin_initial: float
    margin_final: float
    loss_initial: float
    loss_final: float
    drag_change: float
    signal_max: float
    n_jumps: int
    n_phantom_jumps: int
    embeddings_unchanged: bool
    wall_time_s: float
    device: str | None = newer()
    device_name: str | None = newer()
    run: dict[str, Any]  # the run's settings as written (a few keys, later the full RunConfig)
    model: str
    # Sweeps over a fact file (docs/critical-lr.md, "Facts"): the evidence a resume is checked
    # against, and what a fact-set run adds. In a joint run (``quantile`` set) the per-run fields
    # above describe the set: see ``sweep.joint_record``.
    facts_sha256: str | None = newer()  # the fact file's facts, hashed (per-fact and joint sweeps)
    quantile: float | None = newer()  # q of a joint run: success iff ≥ q of its facts end flipped
    fraction_flipped: float | None = newer()  # fact-set runs: the fraction of facts flipped at the end
    n_flipped: int | None = newer()
    n_facts: int | None = newer()

    def validate(self) -> None:
        if self.verdict != verdict_of(self.outcome):
            raise PhantomLensError(
                f"{self.what}: verdict {self.verdict!r} contradicts outcome {self.outcome!r}"
            )
        if "context" not in self.run:
            raise PhantomLensError(f"{self.what}: run lacks its context")
        if self.quantile is not None:
            self._validate_joint()

    def _validate_joint(self) -> None:
        """A joint run's verdict follows from its status, its facts flipped and q (nothing else)."""
        if self.n_facts is None or self.n_flipped is None or not 0 <= self.n_flipped <= self.n_facts:
            raise PhantomLensError(f"{self.what}: a joint run needs 0 ≤ n_flipped ≤ n_facts")
        if not 0 < self.quantile <= 1:
            raise PhantomLensError(f"{self.what}: quantile must be in (0, 1], got {self.quantile!r}")
        if self.status == "diverged":
            expected = DIVERGED
        else:
            expected = SUCCESS if self.n_flipped >= self.needed(self.quantile, self.n_facts) else FAILURE
        if self.verdict != expected:
            raise PhantomLensError(
                f"{self.what}: verdict {self.verdict!r} contradicts {self.n_flipped} of {self.n_facts} "
                f"facts flipped at q = {self.quantile:g}"
            )

    @staticmethod
    def needed(quantile: float, n_facts: int) -> int:
        """Facts that must end flipped for a fraction ≥ q: ⌈q·N⌉, with q·N = 7.000000000000001
        (q = 0.7, N = 10) counted as 7, not 8."""
        return max(1, math.ceil(quantile * n_facts - 1e-9))

    @property
    def context(self) -> str:
        return self.run["context"]

    @property
    def optimizer(self) -> str:
        return self.run.get("optimizer") or "adamw"  # records from before it was stored: the default

    def run_config(self) -> RunConfig:
        """The run's settings as a validated ``RunConfig``."""
        from phantomlens.settings import RunConfig

        return RunConfig.from_dict(self.run)

    @classmethod
    def from_run(cls, summary: RunSummary, events: RunEvents, run: dict[str, Any], wall: float) -> Self:
        """The record a sweep keeps of one finished run (``run``: the settings it ran with)."""
        return cls(
            lr=run["lr"],
            verdict=verdict_of(summary.outcome),
            **{k: getattr(summary, k) for k in _FROM_SUMMARY},
            drag_change=events.outcome_detail.drag_change,
            signal_max=events.outcome_detail.signal_max,
            n_jumps=summary.n_jumps,
            n_phantom_jumps=summary.n_phantom_jumps,
            embeddings_unchanged=summary.embeddings_unchanged,
            wall_time_s=round(wall, 2),
            device=summary.device,
            device_name=summary.device_name,
            run=dict(run),
            model=run["model"],
        )


#: What a sweep run record copies from the run's summary.
_FROM_SUMMARY = (
    "outcome", "silent", "status", "flipped", "flip_step", "flipped_at_end", "steps_completed",
    "margin_initial", "margin_final", "loss_initial", "loss_final",
)  # fmt: skip


@dataclass(kw_only=True)
class SweepSummary(StoredResult):
    """A sweep's ``DIR/summary.json``: its settings, whether it is complete, its table as rows."""

    what: ClassVar[str] = "sweep summary"
    config: dict[str, Any]  # the SweepConfig as written
    complete: bool
    results: list[dict[str, Any]]


# --- readers --------------------------------------------------------------------------------------


def _read(cls: type[StoredResult], path: Path, remedy: str = "") -> Any:
    return cls.from_dict(read_json(path, cls.what, remedy), where=str(path))


def load_run_summary(run_dir: str | Path) -> RunSummary:
    """``RUN_DIR/summary.json`` (the marker of a complete run)."""
    run_dir = existing_dir(run_dir)
    return _read(RunSummary, run_dir / SUMMARY_FILE, "is this a phantomlens run directory?")


def load_run_events(run_dir: str | Path) -> RunEvents | None:
    """``RUN_DIR/events.json``, or None for a run stored before runs were analysed."""
    path = Path(run_dir) / EVENTS_FILE
    return _read(RunEvents, path) if path.is_file() else None


def load_trajectory(run_dir: str | Path) -> pd.DataFrame:
    """``RUN_DIR/trajectory.parquet``: one row per readout (T + 1 for a completed run)."""
    import pandas as pd

    path = existing_dir(run_dir) / TRAJECTORY_FILE
    if not path.is_file():
        raise PhantomLensError(f"{run_dir} is not a complete phantomlens run (no {TRAJECTORY_FILE})")
    table = read_table(path)
    missing = [c for c in TRAJECTORY_COLUMNS if c not in table]
    if missing:
        raise PhantomLensError(f"{path} lacks the trajectory columns {listed(missing)}")
    wrong = [c for c in TRAJECTORY_COLUMNS if not pd.api.types.is_numeric_dtype(table[c])]
    if wrong or table.empty:
        what = listed(wrong) or "the table"
        raise PhantomLensError(f"{path}: {what} must hold numbers, one row per step")
    return table


#: Columns every stored trajectory has (the analysis, the plot and the report read them).
TRAJECTORY_COLUMNS = (
    "step", "lr", "margin", "loss", "phi", "signal", "drag", "p_target", "p_competitor", "overlap_tc",
    "dphi_1", "readout_1", "geometric_1", "cross_1", "dphi_2", "readout_2", "geometric_2", "cross_2",
    "disp_target", "disp_competitor",
)  # fmt: skip


def read_table(path: Path, remedy: str = "") -> pd.DataFrame:
    """A stored parquet table, or one error naming the file (pyarrow raises its own kinds)."""
    import pandas as pd

    if Path(path).is_dir():  # pandas would read a folder as a partitioned dataset, perhaps an empty one
        raise PhantomLensError(f"{path} is a directory, not a parquet file")
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        suffix = f"; {remedy}" if remedy else ""
        raise PhantomLensError(
            f"{path} is not a readable parquet table ({type(exc).__name__}){suffix}"
        ) from None


def load_run_dir(
    run_dir: str | Path, *, events: bool = True
) -> tuple[RunSummary, pd.DataFrame, RunEvents | None]:
    """(summary, trajectory, events) of a complete run directory, or a one-line error.

    Events are None when the run predates events.json, or when ``events=False`` skips reading them.
    """
    run_dir = existing_dir(run_dir)
    for name, kind in ((SUMMARY_FILE, "JSON"), (TRAJECTORY_FILE, "parquet")):
        if (run_dir / name).is_dir():
            raise PhantomLensError(f"{run_dir / name} is a directory, not a {kind} file")
    if not (run_dir / SUMMARY_FILE).is_file() or not (run_dir / TRAJECTORY_FILE).is_file():
        raise PhantomLensError(
            f"{run_dir} is not a complete phantomlens run (no {SUMMARY_FILE} or {TRAJECTORY_FILE})"
        )
    stored = load_run_events(run_dir) if events else None
    return load_run_summary(run_dir), load_trajectory(run_dir), stored


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every complete run directory at or under ``root``, sorted (sweep directories are not runs)."""
    root = Path(root)
    found = [p.parent for p in root.glob(f"**/{SUMMARY_FILE}") if (p.parent / TRAJECTORY_FILE).is_file()]
    return sorted(found)


def load_sweep_record(path: str | Path) -> SweepRunRecord:
    return _read(SweepRunRecord, Path(path))


def load_sweep_records(directory: str | Path) -> list[SweepRunRecord]:
    """Every run record at or under ``directory`` (a sweep, or one context's runs), sorted by path."""
    return [load_sweep_record(p) for p in sorted(Path(directory).glob(f"**/{RECORD_PATTERN}"))]


def load_prediction(path: str | Path) -> Prediction:
    """A stored prediction (a sweep's ``predictions/<model>/<mode>/<context>.json``)."""
    return _read(Prediction, Path(path))


def load_sweep_summary(directory: str | Path) -> SweepSummary:
    """``DIR/summary.json`` of a sweep directory."""
    return _read(SweepSummary, Path(directory) / SUMMARY_FILE, "has the sweep written its results yet?")


def existing_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path, or one line saying why it is not a run directory."""
    run_dir = Path(run_dir)
    if run_dir.is_file():  # `analyze runA/summary.json`: the file was named instead of its folder
        folder = run_dir.parent if run_dir.parent != Path(".") else Path.cwd()
        raise PhantomLensError(f"{run_dir} is a file, not a run directory (give its folder {folder})")
    if not run_dir.is_dir():
        raise PhantomLensError(f"run directory {run_dir} does not exist")
    return run_dir
