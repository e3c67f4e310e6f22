"""A fact-set run's result and its directory, with the shape of ``RunResult``: save, load, analyze, plot.

The directory is written the way a single-context run's is (staged, renamed into place, so it is
complete or absent): config.json, trajectory.parquet (one row per step per fact), summary.json
(``kind: "fact-set"``, a record per fact), events.json (a transitions analysis per fact) and
overview.png, the margin of every fact over the steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phantomlens.atomic import read_json, staged_directory, write_json_atomic
from phantomlens.errors import PhantomLensError, short
from phantomlens.factresults import FactOutcome, FactSetEvents, FactSetSummary, load_fact_trajectory
from phantomlens.results import (
    CONFIG_FILE,
    EVENTS_FILE,
    SUMMARY_FILE,
    TRAJECTORY_FILE,
    RunEvents,
    existing_dir,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from phantomlens.facts import TokenizedFact
    from phantomlens.settings import AnalysisConfig, RunConfig

OVERVIEW_FILE = "overview.png"


@dataclass
class FactSetResult:
    """A finished fact-set run: the long trajectory, the summary with every fact, per-fact events."""

    summary: FactSetSummary
    trajectory: pd.DataFrame
    events: FactSetEvents
    out_dir: Path | None = None

    @property
    def status(self) -> str:
        return self.summary.status

    @property
    def fraction_flipped(self) -> float:
        return self.summary.fraction_flipped

    @property
    def silent_failures(self) -> list[str]:
        return self.summary.silent_failures

    @property
    def config(self) -> RunConfig:
        return self.summary.run_config()

    def fact_trajectory(self, name: str) -> pd.DataFrame:
        """One fact's rows (T + 1 of them for a completed run)."""
        self.summary.fact(name)  # a clear error for an unknown name
        rows = self.trajectory[self.trajectory["fact"] == name]
        return rows.reset_index(drop=True)

    def fact_events(self, name: str) -> RunEvents:
        self.summary.fact(name)
        return self.events.facts[name]

    def table(self) -> pd.DataFrame:
        """One row per fact: its outcome and margins (what ``phantomlens analyze`` prints)."""
        import pandas as pd

        columns = [
            "name",
            "outcome",
            "silent",
            "flipped_at_end",
            "flip_step",
            "margin_initial",
            "margin_final",
            "loss_initial",
            "loss_final",
            "branch",
            "n_jumps",
            "n_phantom_jumps",
        ]
        return pd.DataFrame([{c: getattr(f, c) for c in columns} for f in self.summary.facts])

    @classmethod
    def load(cls, run_dir: str | Path) -> FactSetResult:
        if not isinstance(run_dir, str | Path):
            raise PhantomLensError(f"run_dir must be a path, got {type(run_dir).__name__}")
        run_dir = existing_dir(run_dir)
        path = run_dir / SUMMARY_FILE
        summary = FactSetSummary.from_dict(read_json(path, "fact-set summary"), where=str(path))
        trajectory = load_fact_trajectory(run_dir / TRAJECTORY_FILE, [f.name for f in summary.facts])
        check_consistent(summary, trajectory, run_dir / TRAJECTORY_FILE)
        events_path = run_dir / EVENTS_FILE
        events = FactSetEvents.from_dict(read_json(events_path, "fact-set events"), where=str(events_path))
        missing = [f.name for f in summary.facts if f.name not in events.facts]
        if missing:
            raise PhantomLensError(f"{events_path} has no analysis of {short(missing[0])}")
        return cls(summary, trajectory, events, run_dir)

    def analyze(self, config: AnalysisConfig | None = None) -> FactSetResult:
        """The same run with every fact's transitions analysis redone under ``config``."""
        from phantomlens.facts import Fact, TokenizedFact
        from phantomlens.settings import AnalysisConfig

        config = AnalysisConfig.from_dict(config) if isinstance(config, dict) else config or AnalysisConfig()
        if not isinstance(config, AnalysisConfig):
            raise PhantomLensError(f"config must be an AnalysisConfig, got {type(config).__name__}")
        hashes = (self.summary.embedding_sha256_start, self.summary.embedding_sha256_end)
        records, events = [], {}
        for old in self.summary.facts:
            fact = TokenizedFact(
                Fact(old.prompt, old.target, old.competitor, old.name, old.chat),
                (),
                tuple(old.target_tokens),
                tuple(old.competitor_tokens),
                old.branch,
            )
            record, fact_events = fact_outcome(
                self.fact_trajectory(old.name), fact, self.summary.status, hashes, config
            )
            records.append(record)
            events[old.name] = fact_events
        summary = self.summary.replace(
            facts=records,
            silent_failures=[r.name for r in records if r.silent],
            outcomes={o: sum(r.outcome == o for r in records) for o in sorted({r.outcome for r in records})},
            analysis_thresholds=config.to_dict(),
        )
        return FactSetResult(
            summary,
            self.trajectory,
            FactSetEvents(kind=self.events.kind, facts=events, thresholds=config.to_dict()),
            self.out_dir,
        )

    def plot(self) -> Figure:
        """The overview: every fact's sequence margin over the steps, and the fraction flipped."""
        from phantomlens.plot import fact_set_figure

        return fact_set_figure(self.trajectory, self.summary.to_dict())

    def save(self, out: str | Path, *, overwrite: bool = False, config: RunConfig | None = None) -> Path:
        from phantomlens.plot import figure_png

        out = Path(out)
        config = config or self.config
        summary = self.summary.replace(out_dir=str(out))
        png = figure_png(self.plot())
        with staged_directory(out, overwrite=overwrite) as staging:
            write_json_atomic(staging / CONFIG_FILE, config.to_dict())
            self.trajectory.to_parquet(staging / TRAJECTORY_FILE, index=False)
            (staging / OVERVIEW_FILE).write_bytes(png)
            self.events.write(staging / EVENTS_FILE)
            summary.write(staging / SUMMARY_FILE)
        self.summary, self.out_dir = summary, out
        return out


def check_consistent(summary: FactSetSummary, trajectory: pd.DataFrame, path: Path) -> None:
    """The trajectory holds the same steps for every fact, once each, and agrees with the summary."""
    if trajectory.duplicated(["fact", "step"]).any():
        raise PhantomLensError(f"{path} holds a fact's step twice; it is not a phantomlens trajectory")
    steps = trajectory.groupby("fact")["step"].apply(tuple)
    names = [f.name for f in summary.facts]
    missing = [name for name in names if name not in steps.index]
    if missing or steps.nunique() != 1:
        what = f"no rows for {short(missing[0])}" if missing else "different steps for different facts"
        raise PhantomLensError(f"{path} has {what}; the run directory is damaged")
    last = trajectory.sort_values("step").groupby("fact")["margin"].last()
    for fact in summary.facts:
        expected = summary.status == "completed" and bool(last[fact.name] > 0)
        if fact.flipped_at_end != expected:
            raise PhantomLensError(
                f"{path.parent}: summary.json says {short(fact.name)} flipped_at_end={fact.flipped_at_end}, "
                "but its trajectory says otherwise; the run directory is damaged"
            )


def fact_outcome(
    rows, fact: TokenizedFact, status: str, hashes: tuple[str, str], analysis: AnalysisConfig
) -> tuple[FactOutcome, RunEvents]:
    """One fact's record and transitions analysis, from its rows of the trajectory."""
    from phantomlens.transitions import analyze

    margins = rows["margin"]
    flipped_rows = rows.index[margins > 0]
    last = rows.iloc[-1]
    finite = rows[rows["loss"].map(math.isfinite)]
    final = finite.iloc[-1] if len(finite) else last
    flipped_at_end = bool(status == "completed" and last["margin"] > 0)
    stub = {
        "status": status,
        "flipped_at_end": flipped_at_end,
        "embedding_sha256_start": hashes[0],
        "embedding_sha256_end": hashes[1],
    }
    events = RunEvents.from_dict(analyze(rows, stub, analysis))
    record = FactOutcome(
        name=fact.fact.label,
        prompt=fact.fact.prompt,
        target=fact.fact.target,
        competitor=fact.fact.competitor,
        chat=fact.fact.chat,
        target_tokens=list(fact.target_ids),
        competitor_tokens=list(fact.competitor_ids),
        branch=fact.branch,
        flipped=bool(len(flipped_rows)),
        flip_step=int(rows.loc[flipped_rows[0], "step"]) if len(flipped_rows) else None,
        flipped_at_end=flipped_at_end,
        margin_initial=float(rows.iloc[0]["margin"]),
        margin_final=float(final["margin"]),
        loss_initial=float(rows.iloc[0]["loss"]),
        loss_final=float(final["loss"]),
        outcome=events.outcome,
        silent=events.silent,
        n_jumps=events.n_jumps,
        n_phantom_jumps=events.n_phantom_jumps,
    )
    return record, events
