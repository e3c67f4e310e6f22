"""Typed stored results of a fact-set run: its summary.json (with one record per fact) and events.json.

A fact-set run directory holds the same files as a single-context run (config.json,
trajectory.parquet, summary.json, events.json, a figure), but its trajectory has one row per step
per fact (a ``fact`` column), its summary carries ``kind: "fact-set"`` and a ``FactOutcome`` per
fact, and its events hold one transitions analysis per fact. The compatibility rules are those of
``phantomlens.results``. Nothing heavy is imported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from phantomlens.errors import PhantomLensError, listed
from phantomlens.results import (
    OUTCOMES,
    STATUSES,
    SUMMARY_FILE,
    TRAJECTORY_COLUMNS,
    RunEvents,
    StoredResult,
    newer,
    one_of,
    read_table,
)

if TYPE_CHECKING:
    import pandas as pd

    from phantomlens.settings import RunConfig

FACT_SET = "fact-set"

#: Columns a fact-set trajectory has beyond a single-context one (docs/runs.md).
FACT_COLUMNS = ("fact", "logp_target", "logp_competitor", "margin_branch", "loss_branch")


@dataclass(kw_only=True)
class FactOutcome(StoredResult):
    """One fact of a fact-set run: the fact as tokenised, and how it ended."""

    what: ClassVar[str] = "fact outcome"
    name: str
    prompt: str
    target: str
    competitor: str
    chat: bool
    target_tokens: list[int]
    competitor_tokens: list[int]
    branch: int  # k*
    flipped: bool  # the sequence margin was > 0 at some readout
    flip_step: int | None
    flipped_at_end: bool
    margin_initial: float  # sequence margin ℓ(a|x) − ℓ(b|x) at step 0
    margin_final: float
    loss_initial: float  # mean cross-entropy over the target's tokens
    loss_final: float
    outcome: str = one_of(*OUTCOMES)
    silent: bool
    n_jumps: int
    n_phantom_jumps: int


@dataclass(kw_only=True)
class FactSetSummary(StoredResult):
    """A fact-set run's ``summary.json``."""

    what: ClassVar[str] = "fact-set summary"
    kind: str = one_of(FACT_SET)
    status: str = one_of(*STATUSES)
    status_reason: str
    diverged_step: int | None
    stopped_early: bool
    stop_reason: str
    steps_completed: int
    n_facts: int
    n_flipped: int  # facts whose sequence margin is > 0 at the end
    fraction_flipped: float
    silent_failures: list[str]  # names of the facts that failed although their loss fell
    outcomes: dict[str, int]  # facts per outcome
    loss_initial: float  # the joint loss (mean over facts) at step 0
    loss_final: float
    embedding_sha256_start: str
    embedding_sha256_end: str
    embeddings_unchanged: bool
    geometry: str = one_of("raw", "centred")
    diverge_loss_cutoff: float | None
    vocab_size: int
    device: str
    trainable_parameters: int
    wall_time_s: float
    notes: list[str]
    config: dict[str, Any]
    versions: dict[str, str]
    facts: list[FactOutcome]
    analysis_thresholds: dict[str, int | float]
    out_dir: str | None = newer()
    n_ahead_at_start: int | None = newer()  # facts whose target led at step 0: nothing to flip

    def validate(self) -> None:
        where = self.what
        if self.embeddings_unchanged != (self.embedding_sha256_start == self.embedding_sha256_end):
            raise PhantomLensError(f"{where}: embeddings_unchanged contradicts the recorded hashes")
        if self.n_facts != len(self.facts) or self.n_facts < 1:
            raise PhantomLensError(
                f"{where}: n_facts is {self.n_facts} but {len(self.facts)} facts are recorded"
            )
        if self.n_flipped != sum(f.flipped_at_end for f in self.facts):
            raise PhantomLensError(f"{where}: n_flipped contradicts the facts' outcomes")
        silent = [f.name for f in self.facts if f.silent]
        if sorted(self.silent_failures) != sorted(silent):
            raise PhantomLensError(f"{where}: silent_failures contradicts the facts' outcomes")
        names = [f.name for f in self.facts]
        if len(set(names)) != len(names):
            raise PhantomLensError(f"{where}: two facts have the same name")

    def run_config(self) -> RunConfig:
        from phantomlens.settings import RunConfig

        return RunConfig.from_dict(self.config)

    def fact(self, name: str) -> FactOutcome:
        for fact in self.facts:
            if fact.name == name:
                return fact
        raise PhantomLensError(f"no fact named {name!r} in this run")


@dataclass(kw_only=True)
class FactSetEvents(StoredResult):
    """A fact-set run's ``events.json``: the transitions analysis of each fact, by name."""

    what: ClassVar[str] = "fact-set events"
    kind: str = one_of(FACT_SET)
    facts: dict[str, RunEvents]
    thresholds: dict[str, int | float]


def is_fact_set(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a fact-set run (its summary says ``kind: "fact-set"``)."""
    from phantomlens.atomic import read_json

    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return False
    data = read_json(path, "run summary", "is this a phantomlens run directory?")
    return isinstance(data, dict) and data.get("kind") == FACT_SET


def check_fact_trajectory(table: pd.DataFrame, path: Path, names: list[str]) -> pd.DataFrame:
    """A stored fact-set trajectory: the single-context columns, the fact columns, known facts."""
    import pandas as pd

    missing = [c for c in (*TRAJECTORY_COLUMNS, *FACT_COLUMNS) if c not in table]
    if missing:
        raise PhantomLensError(f"{path} lacks the fact-set trajectory columns {listed(missing)}")
    numeric = [c for c in (*TRAJECTORY_COLUMNS, *FACT_COLUMNS) if c != "fact"]
    wrong = [c for c in numeric if not pd.api.types.is_numeric_dtype(table[c])]
    if wrong or table.empty:
        raise PhantomLensError(f"{path}: {listed(wrong) or 'the table'} must hold numbers")
    unknown = sorted(set(table["fact"].astype(str)) - set(names))
    if unknown:
        raise PhantomLensError(f"{path} has rows for facts the summary does not list: {unknown[:3]}")
    return table


def load_fact_trajectory(path: Path, names: list[str]) -> pd.DataFrame:
    return check_fact_trajectory(read_table(path), path, names)
