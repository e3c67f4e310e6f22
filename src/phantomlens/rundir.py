"""A run's result and its directory: config.json, trajectory.parquet, summary.json, events.json, plot.

``RunResult`` is what ``finetune`` returns and what ``RunResult.load`` reads back, with the shape
of torch-lr-finder's result: ``save``, ``load``, ``analyze`` and ``plot(ax=None)``. The directory is
filled in a hidden staging folder and renamed into place at the end, so it is either complete or
absent; ``summary.json`` is the marker of a complete run. Every file is validated on the way in
and out by ``phantomlens.results``.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from phantomlens.atomic import staged_directory, strict_json, write_json_atomic
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

    from phantomlens.factrun import FactSetResult
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


def reanalyze(
    run_dir: str | Path, config: AnalysisConfig | None = None, *, overwrite: bool = False
) -> RunResult | FactSetResult:
    """Re-run the transitions analysis on a stored run (either kind); rewrite events.json, summary.json
    and the figure. A stored analysis that this one would change is refused unless ``overwrite``.

    Everything is read and validated, and the new analysis computed, before anything is written.
    """
    analysis = reanalysis(run_dir, config)
    analysis.write(overwrite=overwrite)
    return analysis.result


def reanalysis(run_dir: str | Path, config: AnalysisConfig | None = None) -> Reanalysis:
    """A stored run (either kind) analysed again under ``config``, nothing written yet."""
    from phantomlens.factresults import is_fact_set

    run_dir = Path(run_dir)
    if is_fact_set(run_dir):
        from phantomlens.factrun import OVERVIEW_FILE, FactSetResult

        return Reanalysis(run_dir, FactSetResult.load(run_dir).analyze(config), OVERVIEW_FILE)
    summary, trajectory, _ = load_run_dir(run_dir, events=False)
    result = RunResult(summary, trajectory, None, run_dir).analyze(config)  # type: ignore[arg-type]
    return Reanalysis(run_dir, result, PLOT_FILE)


@dataclass
class Reanalysis:
    """A stored run's analysis redone, not yet written. events.json and summary.json are written
    when they are missing or differ, and the figure with them (it is drawn from them) or when it is
    missing; an unchanged analysis writes nothing, so a read-only run directory can be analysed.
    ``write`` refuses to replace a stored value unless told to overwrite."""

    run_dir: Path
    result: RunResult | FactSetResult
    figure: str  # the figure's file name in run_dir
    files: dict = field(init=False)  # result file name -> its new content
    changed: list[str] = field(init=False)  # stored result files whose values this analysis replaces
    fields: list[str] = field(init=False)  # the top-level fields it replaces in them
    added: list[str] = field(init=False)  # result files not stored yet, or stored without some fields
    writes: list[str] = field(init=False)  # the files ``write`` writes, the figure first; [] if unchanged

    def __post_init__(self) -> None:
        new = {EVENTS_FILE: self.result.events.to_dict(), SUMMARY_FILE: self.result.summary.to_dict()}
        self.files = {name: _as_written(content) for name, content in new.items()}
        stored = {name: _stored_json(self.run_dir / name) for name in self.files}
        # Only a stored value that would be replaced or dropped counts as a change: fields a file
        # lacks (a run analysed by an older version, or never) are added without asking.
        replaced = {
            n: _replaced_keys(stored[n], self.files[n]) for n in self.files if stored[n] is not _ABSENT
        }
        self.changed = [name for name, keys in replaced.items() if keys]
        self.fields = sorted({key for keys in replaced.values() for key in keys})
        self.added = [n for n in self.files if n not in self.changed and stored[n] != self.files[n]]
        results = [n for n in self.files if n in self.added or n in self.changed]
        redraw = results or not (self.run_dir / self.figure).is_file()
        self.writes = [self.figure, *results] if redraw else []

    def check(self, overwrite: bool = False) -> None:
        """A one-line error if writing would replace stored results and ``overwrite`` is not given,
        or if there is something to write and the directory refuses new files."""
        if self.changed and not overwrite:
            fields = ", ".join(self.fields[:4]) + (", …" if len(self.fields) > 4 else "")
            raise PhantomLensError(
                f"{self.run_dir}: this analysis would change the stored {' and '.join(self.changed)} "
                f"({fields}); pass --overwrite (overwrite=True) to replace them, or copy the run first"
            )
        if self.writes:
            _check_writable(self.run_dir, self.writes)

    def write(self, overwrite: bool = False) -> None:
        from phantomlens.atomic import write_bytes_atomic
        from phantomlens.plot import figure_png

        self.check(overwrite)
        if self.figure in self.writes:
            write_bytes_atomic(self.run_dir / self.figure, figure_png(self.result.plot()))
        for name in self.files:  # summary.json last, as when the run was written
            if name in self.writes:
                write_json_atomic(self.run_dir / name, self.files[name])


def _check_writable(run_dir: Path, names: list[str]) -> None:
    """Fail in one line, before anything is written, when ``run_dir`` refuses new files.

    Every write is a temporary file renamed into place, so creating one is the test; it also holds
    for root, whom chmod does not stop but a read-only mount does.
    """
    for name in names:
        if (run_dir / name).is_dir():
            raise PhantomLensError(f"{run_dir / name} is a directory, not a file; the run is damaged")
    try:
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise PhantomLensError(
            f"{run_dir}: cannot write {', '.join(names)} there ({reason}); copy the run to a writable "
            "folder and analyse the copy"
        ) from None


_ABSENT = object()


def _stored_json(path: Path):
    """A stored file's JSON; ``_ABSENT`` when there is none, None when it is not JSON (so it differs)."""
    if not path.is_file():
        return _ABSENT
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def _as_written(obj) -> object:
    """``obj`` as it reads back from disk (NaN as null, tuples as lists), for comparing with a file."""
    return json.loads(strict_json(obj))


def _replaced_keys(old, new: dict) -> list[str]:
    """The top-level fields of a stored JSON object that ``new`` would replace or drop."""
    if not isinstance(old, dict):
        return ["the whole file"]
    return [key for key in old if new.get(key, _ABSENT) != old[key]]
