"""The paper's claims, computed from the stored results as data: numbers, tables and verdicts.

Every verdict the findings doc states is decided here, by a condition on the data, and carried as
a field (a boolean, a category, a list of models) that ``tools.findings_md`` turns into words.
So a sentence such as "nearly absent on Gemma" is only written while the data says so. The
bounds behind such words (what "most", "nearly every", "common" mean) are named constants below.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pandas as pd

from phantomlens.results import DEFAULT_VARIANT
from tools.findings_data import FAILURES, MODELS, MODES, GpuCheck, Stored, sweep_contexts
from tools.phantoms_demo import ORDINARY_LR

#: "most failing runs are silent": more than this share of them.
MOST = 0.5
#: "nearly every …": at least this share.
NEARLY_ALL = 0.9
#: "just below η_c": at least this fraction of it.
JUST_BELOW = 0.9
#: Structural failure is "common" on a model from this share of its failing runs, "nearly absent"
#: up to ``RARE`` (and "absent" at none); in between it is "occasional".
COMMON = 0.2
RARE = 0.1
#: The geometry's share of ΔΦ below which its motion is "far too small to matter for Φ".
NEGLIGIBLE_SHARE = 0.01
#: The paper's blind-prediction error, and the explainer's early-stopping saving.
PAPER_BLIND_ERROR = 0.021
CLAIMED_SAVING = 0.30
#: A saving within this of the claim "roughly" matches it.
SAVING_SLACK = 0.05
#: The GPU part takes "several times longer" on the CPU when the demo ran this many times slower there.
SEVERAL = 3.0


def _thresholds():
    from phantomlens.settings import AnalysisConfig

    return AnalysisConfig()


def _adamw(runs: pd.DataFrame, model: str, mode: str) -> pd.DataFrame:
    return runs[(runs["model"] == model) & (runs["mode"] == mode) & (runs["optimizer"] == "adamw")]


# --- 1. silent failures ---------------------------------------------------------------------------


@dataclass
class SilentRow:
    model: str
    mode: str
    runs: int
    failures: int
    silent: int
    contexts: int  # contexts with a silent failure
    ratios: list[float]  # η/η_c of the silent failures (where η_c is measured)

    @property
    def share(self) -> float | None:
        return self.silent / self.failures if self.failures else None


@dataclass
class SilentClaim:
    loss_drop: float  # the silent_loss_drop threshold
    rows: list[SilentRow]
    holds_on: list[str]  # models with at least one silent failure
    silent_share: float | None  # silent / failing runs, over all rows
    all_below_critical: bool  # every silent failure ran below its context's η_c
    near_critical_share: float | None  # silent share of the failures at η ≥ JUST_BELOW·η_c


def claim_silent(runs: pd.DataFrame, critical: pd.DataFrame) -> SilentClaim:
    etac = {(r.model, r.mode, r.context): r.eta_c for r in critical.itertuples()}
    rows, near = [], []
    for model in MODELS:
        for mode in MODES:
            sub = _adamw(runs, model, mode)
            failures = sub[sub["outcome"].isin(FAILURES)]
            silent = failures[failures["silent"]]
            for r in failures.itertuples():
                eta_c = etac.get((model, mode, r.context))
                if eta_c and r.lr / eta_c >= JUST_BELOW:
                    near.append(bool(r.silent))
            ratios = [
                r.lr / etac[(model, mode, r.context)]
                for r in silent.itertuples()
                if etac.get((model, mode, r.context))
            ]
            rows.append(
                SilentRow(
                    model, mode, len(sub), len(failures), len(silent), silent["context"].nunique(), ratios
                )
            )
    failures = sum(r.failures for r in rows)
    return SilentClaim(
        loss_drop=_thresholds().silent_loss_drop,
        rows=rows,
        holds_on=[m for m in MODELS if any(r.silent for r in rows if r.model == m)],
        silent_share=sum(r.silent for r in rows) / failures if failures else None,
        all_below_critical=all(x < 1 for r in rows for x in r.ratios if math.isfinite(x)),
        near_critical_share=sum(near) / len(near) if near else None,
    )


# --- 2. kinematic and structural failure ----------------------------------------------------------


@dataclass
class FailureModeRow:
    model: str
    mode: str
    failing: int
    kinematic: int
    structural: int
    drag_structural: float | None  # median drag change
    drag_kinematic: float | None


@dataclass
class FailureModesClaim:
    drag_worsening: float
    rows: list[FailureModeRow]
    both_seen_in: list[str]  # "model mode" where both modes occur
    kinematic_share: dict[str, float]  # per model, of its failing runs
    structural_presence: dict[str, str]  # per model: common | occasional | nearly absent | absent

    @property
    def kinds_present(self) -> list[str]:
        return [k for k in FAILURES if any(getattr(r, k) for r in self.rows)]


def _median(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(statistics.median(values)) if len(values) else None


def _presence(structural: int, failing: int) -> str:
    share = structural / failing if failing else 0.0
    if structural == 0:
        return "absent"
    return "common" if share >= COMMON else "nearly absent" if share <= RARE else "occasional"


def claim_failure_modes(runs: pd.DataFrame) -> FailureModesClaim:
    rows = []
    for model in MODELS:
        for mode in MODES:
            sub = runs[(runs["model"] == model) & (runs["mode"] == mode) & runs["outcome"].isin(FAILURES)]
            kin, struc = sub[sub["outcome"] == "kinematic"], sub[sub["outcome"] == "structural"]
            rows.append(
                FailureModeRow(
                    model,
                    mode,
                    len(sub),
                    len(kin),
                    len(struc),
                    _median(struc["drag_change"]),
                    _median(kin["drag_change"]),
                )
            )
    failing = runs[runs["outcome"].isin(FAILURES)]
    by_model = {m: failing[failing["model"] == m] for m in MODELS}
    return FailureModesClaim(
        drag_worsening=_thresholds().drag_worsening,
        rows=rows,
        both_seen_in=[f"{r.model} {r.mode}" for r in rows if r.kinematic and r.structural],
        kinematic_share={m: float((f["outcome"] == "kinematic").mean()) for m, f in by_model.items()},
        structural_presence={
            m: _presence(int((f["outcome"] == "structural").sum()), len(f)) for m, f in by_model.items()
        },
    )


# --- 3. jumps -------------------------------------------------------------------------------------


@dataclass
class JumpRow:
    model: str
    mode: str
    runs: int
    with_jump: int
    jumps: int
    successes_with_jump: int
    successes: int

    @property
    def share(self) -> float:
        return self.with_jump / max(1, self.runs)


@dataclass
class JumpsClaim:
    rows: list[JumpRow]
    share_with_jump: dict[str, float]  # per model, of its runs
    runs_with_jump: int
    flipped_with_jump: int  # runs with a jump that ended in success
    flip_always_models: list[str]  # models where every run with a jump flipped


def claim_jumps(runs: pd.DataFrame) -> JumpsClaim:
    rows = []
    for model in MODELS:
        for mode in MODES:
            sub = runs[(runs["model"] == model) & (runs["mode"] == mode)]
            success = sub[sub["outcome"] == "success"]
            rows.append(
                JumpRow(
                    model,
                    mode,
                    len(sub),
                    int((sub["n_jumps"] > 0).sum()),
                    int(sub["n_jumps"].sum()),
                    int((success["n_jumps"] > 0).sum()),
                    len(success),
                )
            )
    jumped = runs[runs["n_jumps"] > 0]
    return JumpsClaim(
        rows=rows,
        share_with_jump={m: float((runs[runs["model"] == m]["n_jumps"] > 0).mean()) for m in MODELS},
        runs_with_jump=len(jumped),
        flipped_with_jump=int((jumped["outcome"] == "success").sum()),
        flip_always_models=[
            m
            for m in MODELS
            if len(jumped[jumped["model"] == m])
            and (jumped[jumped["model"] == m]["outcome"] == "success").all()
        ],
    )


# --- 4. phantoms under LoRA -----------------------------------------------------------------------


@dataclass
class PhantomRow:
    model: str
    mode: str
    runs: int
    frozen: int  # runs whose embeddings stayed bit-identical
    jumps: int
    phantoms: int


@dataclass
class PhantomsClaim:
    phantom_fraction: float
    rows: list[PhantomRow]
    lora_readout_fractions: list[float]  # R/ΔΦ of the LoRA jumps in run directories
    lora_runs: int
    lora_frozen: int
    lora_jumps: int
    lora_phantoms: int
    full_jumps: int
    full_phantoms: int
    # Models whose LoRA runs all kept their embeddings and whose LoRA jumps are all phantoms:
    holds_on: list[str]

    @property
    def lora_readout_min(self) -> float | None:
        return min(self.lora_readout_fractions, default=None)

    @property
    def lora_readout_median(self) -> float | None:
        fractions = self.lora_readout_fractions
        return statistics.median(fractions) if fractions else None


def claim_phantoms(runs: pd.DataFrame, dirs: pd.DataFrame) -> PhantomsClaim:
    rows = []
    for model in MODELS:
        for mode in ("lora", "full"):
            sub = runs[(runs["mode"] == mode) & (runs["model"] == model)]
            rows.append(
                PhantomRow(
                    model,
                    mode,
                    len(sub),
                    int(sub["embeddings_unchanged"].sum()),
                    int(sub["n_jumps"].sum()),
                    int(sub["n_phantom_jumps"].sum()),
                )
            )
    lora = {r.model: r for r in rows if r.mode == "lora"}
    full = [r for r in rows if r.mode == "full"]
    return PhantomsClaim(
        phantom_fraction=_thresholds().phantom_fraction,
        rows=rows,
        lora_readout_fractions=[
            j.readout_fraction for js in dirs[dirs["mode"] == "lora"]["jumps"] for j in js
        ],
        lora_runs=sum(r.runs for r in lora.values()),
        lora_frozen=sum(r.frozen for r in lora.values()),
        lora_jumps=sum(r.jumps for r in lora.values()),
        lora_phantoms=sum(r.phantoms for r in lora.values()),
        full_jumps=sum(r.jumps for r in full),
        full_phantoms=sum(r.phantoms for r in full),
        holds_on=[m for m, r in lora.items() if r.frozen == r.runs and r.jumps and r.phantoms == r.jumps],
    )


# --- 5. symmetry breaking -------------------------------------------------------------------------


@dataclass
class SymmetryJump:
    run: str
    lr: float
    optimizer: str
    step: int
    readout_share: float  # R/ΔΦ
    geometric_share: float  # (Γ + X)/ΔΦ
    overlap_ratio: float
    displacement_ratio: float
    delta_overlap: float
    flagged: bool  # a burst of geometric motion per unit LR (symmetry_breaking)
    phantom: bool

    @property
    def ordinary(self) -> bool:
        return self.lr <= ORDINARY_LR and self.optimizer == "adamw"


@dataclass
class SymmetryClaim:
    symmetry_ratio: float
    phantom_fraction: float
    jumps: list[SymmetryJump]  # every full-fine-tuning jump in the run directories
    extreme_adamw_lrs: list[float]  # the LRs above ORDINARY_LR with a jump (AdamW)
    extreme_other: dict[str, list[float]]  # other optimisers: the LRs with a jump

    @property
    def ordinary(self) -> list[SymmetryJump]:
        return [j for j in self.jumps if j.ordinary]

    @property
    def extreme(self) -> list[SymmetryJump]:
        return [j for j in self.jumps if not j.ordinary]

    @property
    def flagged(self) -> list[SymmetryJump]:
        return [j for j in self.ordinary if j.flagged]

    @property
    def shown(self) -> list[SymmetryJump]:
        """The table's rows: flagged jumps and those the readout does not carry, by LR and run."""
        listed = [j for j in self.jumps if j.flagged or j.readout_share < self.phantom_fraction]
        return sorted(listed, key=lambda j: (j.lr, j.run))

    @property
    def ordinary_all_readout(self) -> bool:
        return all(j.phantom for j in self.ordinary)

    @property
    def max_geometric_share(self) -> float:
        return max((abs(j.geometric_share) for j in self.ordinary), default=math.nan)

    @property
    def extreme_geometric(self) -> list[SymmetryJump]:
        """Extreme-LR jumps the geometry does carry (not phantoms)."""
        return [j for j in self.extreme if not j.phantom]


def claim_symmetry(dirs: pd.DataFrame) -> SymmetryClaim:
    jumps = []
    for row in dirs[dirs["mode"] == "full"].itertuples():
        for j in row.jumps:
            delta = j.delta_phi
            jumps.append(
                SymmetryJump(
                    run=row.path,
                    lr=row.lr,
                    optimizer=row.optimizer,
                    step=j.step,
                    readout_share=j.readout_fraction,
                    geometric_share=(j.geometric + j.cross) / delta if delta else math.nan,
                    overlap_ratio=j.overlap_change_ratio,
                    displacement_ratio=j.displacement_ratio,
                    delta_overlap=j.delta_overlap,
                    flagged=j.symmetry_breaking,
                    phantom=j.phantom,
                )
            )
    extreme = [j for j in jumps if not j.ordinary]
    others = {j.optimizer for j in extreme if j.optimizer != "adamw"}
    thresholds = _thresholds()
    return SymmetryClaim(
        symmetry_ratio=thresholds.symmetry_ratio,
        phantom_fraction=thresholds.phantom_fraction,
        jumps=jumps,
        extreme_adamw_lrs=sorted({j.lr for j in extreme if j.optimizer == "adamw"}),
        extreme_other={o: sorted({j.lr for j in extreme if j.optimizer == o}) for o in sorted(others)},
    )


# --- 6. a dimensionless quantity ------------------------------------------------------------------


@dataclass
class KappaRow:
    key: str
    model: str
    n: int
    geometric_mean: float
    cv: float
    low: float
    high: float


@dataclass
class Consistency:
    key: str
    models: int  # how many models measured this key
    ratio: float  # the models' κ, largest over smallest
    spread: float  # one geometric standard deviation across contexts (the widest model's)
    distance_from_one: float  # the largest |log κ| of the models
    resolution: float  # the sweeps' bracket (1 + tolerance): κ differences below it are not measured

    @property
    def consistent(self) -> bool:
        return self.ratio < max(self.spread, self.resolution)

    @property
    def variant(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass
class KappaClaim:
    rows: list[KappaRow]
    consistency: list[Consistency]  # keys measured on at least two models

    @property
    def full_consistent(self) -> list[str]:
        return [c.key for c in self.consistency if c.key.startswith("full/") and c.consistent]

    def _full(self) -> list[Consistency]:
        return [c for c in self.consistency if c.key.startswith("full/")]

    @property
    def closest_to_one(self) -> str | None:
        full = self._full()
        return min(full, key=lambda c: c.distance_from_one).variant if full else None

    @property
    def tightest(self) -> str | None:
        full = self._full()
        return min(full, key=lambda c: c.spread).variant if full else None


def claim_kappa(calibration: dict) -> KappaClaim:
    from phantomlens.settings import SweepConfig

    resolution = 1 + SweepConfig().tolerance
    rows, consistency = [], []
    for key, entry in sorted(calibration.get("kappa", {}).items()):
        per = entry.get("per_model", {})
        for model, stats in sorted(per.items()):
            rows.append(
                KappaRow(
                    key, model, stats["n"], stats["geometric_mean"], stats["cv"], stats["min"], stats["max"]
                )
            )
        if len(per) >= 2:
            means = [per[m]["geometric_mean"] for m in sorted(per)]
            spread = math.exp(max(s["log_std"] for s in per.values()))
            distance = max(abs(math.log(k)) for k in means)
            ratio = max(means) / min(means)
            consistency.append(Consistency(key, len(per), ratio, spread, distance, resolution))
    return KappaClaim(rows, consistency)


# --- 7. classes and LoRA sufficiency --------------------------------------------------------------


@dataclass
class ClassRow:
    model: str
    mean_overlap: float
    crowding: float
    hidden_size: int
    geometry_class: str
    predicted_sufficient: bool
    flipped: int | None  # contexts LoRA flipped below divergence (None: no finished LoRA sweep)
    contexts: int | None
    measured_sufficient: bool | None
    right: bool | None  # the prediction against the measurement (None: not measured)


@dataclass
class ClassesClaim:
    rows: list[ClassRow]

    @property
    def distinct_classes(self) -> int:
        return len({r.geometry_class for r in self.rows})

    @property
    def wrong(self) -> list[ClassRow]:
        return [r for r in self.rows if r.right is False]

    @property
    def right(self) -> list[ClassRow]:
        return [r for r in self.rows if r.right]

    @property
    def unmeasured(self) -> list[ClassRow]:
        return [r for r in self.rows if r.right is None]


def claim_classes(result: dict) -> ClassesClaim:
    classes, lora = result.get("classes", {}), result.get("lora_sufficiency", {})
    rows = []
    for model in MODELS:
        c = classes.get(model)
        if not c:
            continue
        entry = lora.get(model, {})
        rows.append(
            ClassRow(
                model=model,
                mean_overlap=c["mean_overlap"],
                crowding=c["crowding"],
                hidden_size=c["hidden_size"],
                geometry_class=c["geometry_class"],
                predicted_sufficient=c["lora_sufficient_predicted"],
                flipped=entry.get("flipped_below_divergence"),
                contexts=entry.get("contexts"),
                measured_sufficient=entry.get("sufficient"),
                right=entry.get("prediction_right"),
            )
        )
    return ClassesClaim(rows)


# --- 8. blind prediction --------------------------------------------------------------------------


@dataclass
class BlindClaim:
    rows: list[dict]  # calibration.json's blind entries, by key and model
    contexts: int  # contexts per held-out model
    tolerance: float  # the sweeps' bracket on η_c
    paper_error: float = PAPER_BLIND_ERROR

    @property
    def best(self) -> dict | None:
        return min(self.rows, key=lambda b: b["median_abs_error"]) if self.rows else None

    @property
    def reproduced(self) -> bool:
        return self.best is not None and self.best["median_abs_error"] <= self.paper_error


def claim_blind(calibration: dict) -> BlindClaim:
    from phantomlens.settings import SweepConfig

    rows = sorted(calibration.get("blind", []), key=lambda b: (b["key"], b["model"]))
    return BlindClaim(rows=rows, contexts=len(sweep_contexts()), tolerance=SweepConfig().tolerance)


# --- 9. early stopping ----------------------------------------------------------------------------


@dataclass
class EarlyStopClaim:
    groups: list[tuple[str, dict]]  # (model/mode, its group from early_stop.json), sorted
    runs: int | None
    median_saving: float | None
    claimed: float = CLAIMED_SAVING

    @property
    def lost(self) -> int:
        return sum(len(g["lost_flip_at_stop"]) + len(g["lost_flip_later"]) for _, g in self.groups)

    @property
    def verdict(self) -> str:
        """beats | matches | misses | untested: the median saving against the claimed one."""
        if self.median_saving is None:
            return "untested"
        if self.median_saving >= self.claimed:
            return "beats"
        return "matches" if self.median_saving >= self.claimed - SAVING_SLACK else "misses"


def claim_early_stop(stops: dict) -> EarlyStopClaim:
    overall = stops.get("overall", {})
    return EarlyStopClaim(
        sorted(stops.get("groups", {}).items()), overall.get("runs"), overall.get("median_saving")
    )


# --- the summary table, the header and the closing sections ---------------------------------------


@dataclass
class ModelSummary:
    """One column of the summary table: each claim's headline numbers for one model."""

    model: str
    failing: int
    silent: int
    kinematic: int
    structural: int
    runs: int
    runs_with_jump: int
    lora_jumps: int
    lora_phantoms: int
    lora_runs: int
    lora_frozen: int
    ordinary_full_jumps: int  # full-FT jumps at ordinary LRs in run directories
    ordinary_full_phantoms: int
    ordinary_full_bursts: int
    kappa: dict | None  # full/adamw/<default variant> per-model κ statistics
    geometry_class: str | None
    lora_prediction_right: bool | None
    best_blind: dict | None
    savings: dict[str, float | None]  # mode → median saving


def _ordinary_full_jumps(dirs: pd.DataFrame, model: str) -> list:
    sub = dirs[(dirs["model"] == model) & (dirs["mode"] == "full")]
    return [j for js, lr in zip(sub["jumps"], sub["lr"], strict=True) if lr <= ORDINARY_LR for j in js]


def model_summary(stored: Stored, model: str) -> ModelSummary:
    runs = stored.runs[stored.runs["model"] == model]
    failing = runs[runs["outcome"].isin(FAILURES)]
    lora = runs[runs["mode"] == "lora"]
    ordinary = _ordinary_full_jumps(stored.dirs, model)
    blind = [b for b in stored.calibration.get("blind", []) if b["model"] == model]
    groups = stored.stops.get("groups", {})
    return ModelSummary(
        model=model,
        failing=len(failing),
        silent=int(failing["silent"].sum()),
        kinematic=int((runs["outcome"] == "kinematic").sum()),
        structural=int((runs["outcome"] == "structural").sum()),
        runs=len(runs),
        runs_with_jump=int((runs["n_jumps"] > 0).sum()),
        lora_jumps=int(lora["n_jumps"].sum()),
        lora_phantoms=int(lora["n_phantom_jumps"].sum()),
        lora_runs=len(lora),
        lora_frozen=int(lora["embeddings_unchanged"].sum()),
        ordinary_full_jumps=len(ordinary),
        ordinary_full_phantoms=sum(j.phantom for j in ordinary),
        ordinary_full_bursts=sum(j.symmetry_breaking for j in ordinary),
        kappa=stored.calibration.get("kappa", {})
        .get(f"full/adamw/{DEFAULT_VARIANT}", {})
        .get("per_model", {})
        .get(model),
        geometry_class=stored.result.get("classes", {}).get(model, {}).get("geometry_class"),
        lora_prediction_right=stored.result.get("lora_sufficiency", {})
        .get(model, {})
        .get("prediction_right"),
        best_blind=min(blind, key=lambda b: b["median_abs_error"]) if blind else None,
        savings={m: groups[f"{model}/{m}"]["median_saving"] for m in MODES if f"{model}/{m}" in groups},
    )


@dataclass
class Protocol:
    """What the stored runs have in common (and where they differ), for the doc's opening."""

    runs: int
    by_source: dict[str, int]
    steps: list[int]
    schedules: list[str]
    seeds: list[int]
    optimizers: dict[str, int]  # optimiser → runs


def protocol(runs: pd.DataFrame) -> Protocol:
    def values(column: str) -> list:
        return sorted(runs[column].dropna().unique().tolist())

    return Protocol(
        runs=len(runs),
        by_source={s: int(n) for s, n in sorted(runs.groupby("source").size().items())},
        steps=[int(v) for v in values("steps")],
        schedules=values("schedule"),
        seeds=[int(v) for v in values("seed")],
        optimizers={o: int(n) for o, n in runs.groupby("optimizer").size().items()},
    )


@dataclass
class GridCell:
    model: str
    mode: str
    lr: float
    outcomes: list[tuple[str, int]]  # (outcome, runs), most frequent first


def grid_cells(runs: pd.DataFrame) -> list[GridCell]:
    grid = runs[runs["source"] == "grid"]
    cells = []
    for (model, mode, lr), group in grid.groupby(["model", "mode", "lr"]):
        counts = group["outcome"].value_counts()
        cells.append(GridCell(model, mode, lr, [(str(o), int(n)) for o, n in counts.items()]))
    return cells


@dataclass
class Findings:
    """Everything docs/findings.md states, as data."""

    protocol: Protocol
    summaries: list[ModelSummary]
    silent: SilentClaim
    failure_modes: FailureModesClaim
    jumps: JumpsClaim
    phantoms: PhantomsClaim
    symmetry: SymmetryClaim
    kappa: KappaClaim
    classes: ClassesClaim
    blind: BlindClaim
    early_stop: EarlyStopClaim
    grid: list[GridCell]
    sweep_contexts: int
    seconds: dict[str, float]
    gpu: GpuCheck | None  # None when the check is not stored
    several: float = SEVERAL


def compute(stored: Stored) -> Findings:
    runs, dirs = stored.runs, stored.dirs
    return Findings(
        protocol=protocol(runs),
        summaries=[model_summary(stored, m) for m in MODELS],
        silent=claim_silent(runs, stored.critical),
        failure_modes=claim_failure_modes(runs),
        jumps=claim_jumps(runs),
        phantoms=claim_phantoms(runs, dirs),
        symmetry=claim_symmetry(dirs),
        kappa=claim_kappa(stored.calibration),
        classes=claim_classes(stored.result),
        blind=claim_blind(stored.calibration),
        early_stop=claim_early_stop(stored.stops),
        grid=grid_cells(runs),
        sweep_contexts=len(sweep_contexts()),
        seconds=stored.seconds,
        gpu=stored.gpu,
    )
