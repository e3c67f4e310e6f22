"""A run's result and its directory: config.json, trajectory.parquet, summary.json, events.json, plot.

``RunResult`` is what ``finetune`` returns and what ``RunResult.load`` reads back, with the shape
of torch-lr-finder's result: ``save``, ``load``, ``analyze`` and ``plot(ax=None)``. The directory is
filled in a hidden staging folder and renamed into place at the end, so it is either complete or
absent; ``summary.json`` is the marker of a complete run. Every file is validated on the way in
and out by ``phantomlens.results``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phantomlens.atomic import staged_directory, write_json_atomic
from phantomlens.errors import PhantomLensError
from phantomlens.results import (
    CONFIG_FILE,
    EVENTS_FILE,
    PLOT_FILE,
    SUMMARY_FILE,
    TRAJECTORY_FILE,
    RunEvents,
    RunSummary,
    load_run_dir,
)

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from phantomlens.settings import AnalysisConfig, RunConfig


@dataclass
class RunResult:
    """A finished run: its per-step trajectory, its summary and its transitions analysis."""

    summary: RunSummary
    trajectory: pd.DataFrame
    events: RunEvents
    out_dir: Path | None = None

    @property
    def status(self) -> str:
        return self.summary.status

    @property
    def outcome(self) -> str:
        return self.summary.outcome

    @property
    def flipped(self) -> bool:
        return self.summary.flipped

    @property
    def notes(self) -> list[str]:
        return self.summary.notes

    @property
    def config(self) -> RunConfig:
        return self.summary.run_config()

    @classmethod
    def load(cls, run_dir: str | Path) -> RunResult:
        """Read a complete run directory (a run stored before events.json existed is analysed)."""
        from phantomlens.factresults import is_fact_set

        if is_fact_set(run_dir):
            raise PhantomLensError(
                f"{run_dir} holds a fact-set run; read it with phantomlens.FactSetResult.load"
            )
        summary, trajectory, events = load_run_dir(run_dir)
        result = cls(summary, trajectory, events, Path(run_dir))  # type: ignore[arg-type]
        return result.analyze() if events is None else result

    def analyze(self, config: AnalysisConfig | None = None) -> RunResult:
        """The same run with its transitions analysis redone under ``config`` (nothing is written)."""
        from phantomlens.transitions import analyze

        events = RunEvents.from_dict(analyze(self.trajectory, self.summary.to_dict(), config))
        return RunResult(self.summary.analysed(events), self.trajectory, events, self.out_dir)

    def plot(self, ax: Axes | None = None) -> Figure:
        """The six-panel figure of the run; with ``ax``, only the margin panel, drawn on ``ax``."""
        from phantomlens.plot import plot_margin, trajectory_figure

        if ax is not None:
            plot_margin(self.trajectory, ax, flip_step=self.summary.flip_step)
            return ax.figure
        jumps = [jump.to_dict() for jump in self.events.jumps]
        return trajectory_figure(self.trajectory, self.summary.to_dict(), jumps)

    def save(self, out: str | Path, *, overwrite: bool = False, config: RunConfig | None = None) -> Path:
        """Write the run directory ``out`` atomically (``config``: the settings to store, by default
        the summary's)."""
        from phantomlens.plot import plot_trajectory

        out = Path(out)
        config = config or self.config
        summary = self.summary.replace(out_dir=str(out))
        with staged_directory(out, overwrite=overwrite) as staging:
            context = summary.context.to_dict()
            write_json_atomic(staging / CONFIG_FILE, {**config.to_dict(), "context_resolved": context})
            self.trajectory.to_parquet(staging / TRAJECTORY_FILE, index=False)
            jumps = [jump.to_dict() for jump in self.events.jumps]
            plot_trajectory(self.trajectory, summary.to_dict(), staging / PLOT_FILE, jumps)
            self.events.write(staging / EVENTS_FILE)
            summary.write(staging / SUMMARY_FILE)
        self.summary, self.out_dir = summary, out
        return out


def reanalyze(run_dir: str | Path, config: AnalysisConfig | None = None) -> RunResult:
    """Re-run the transitions analysis on a stored run; rewrite events.json, summary.json and the plot.

    Everything is read and validated, and the new analysis computed, before anything is written.
    """
    from phantomlens.atomic import write_bytes_atomic
    from phantomlens.plot import figure_png

    run_dir = Path(run_dir)
    summary, trajectory, _ = load_run_dir(run_dir, events=False)
    result = RunResult(summary, trajectory, None, run_dir).analyze(config)  # type: ignore[arg-type]
    png = figure_png(result.plot())
    result.events.write(run_dir / EVENTS_FILE)
    write_bytes_atomic(run_dir / PLOT_FILE, png)
    result.summary.write(run_dir / SUMMARY_FILE)
    return result
