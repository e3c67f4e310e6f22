"""A run directory: config.json, trajectory.parquet, summary.json, trajectory.png.

The directory is filled in a hidden staging folder and renamed into place at the end, so it is
either complete or absent. ``summary.json`` is the marker of a complete run.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from phantomlens.atomic import read_json, staged_directory, write_json_atomic
from phantomlens.errors import PhantomLensError

CONFIG_FILE = "config.json"
TRAJECTORY_FILE = "trajectory.parquet"
SUMMARY_FILE = "summary.json"
EVENTS_FILE = "events.json"
PLOT_FILE = "trajectory.png"


def write_run(out: Path, config, result, overwrite: bool = False) -> Path:
    from phantomlens.plot import plot_trajectory

    with staged_directory(out, overwrite=overwrite) as staging:
        write_json_atomic(
            staging / CONFIG_FILE,
            {**config.to_dict(), "context_resolved": result.summary["context"]},
        )
        result.trajectory.to_parquet(staging / TRAJECTORY_FILE, index=False)
        plot_trajectory(result.trajectory, result.summary, staging / PLOT_FILE, result.events.get("jumps"))
        write_json_atomic(staging / EVENTS_FILE, result.events)
        summary = {**result.summary, "out_dir": str(out)}
        write_json_atomic(staging / SUMMARY_FILE, summary)
    return out


def reanalyze(run_dir: str | Path, config=None) -> tuple[dict, dict]:
    """Re-run the transitions analysis on a stored run; rewrite events.json, summary.json and the plot."""
    from phantomlens.plot import plot_trajectory
    from phantomlens.transitions import analyze, summary_fields

    run_dir = Path(run_dir)
    summary, trajectory = read_run(run_dir)
    events = analyze(trajectory, summary, config)
    summary.update(summary_fields(events))
    write_json_atomic(run_dir / EVENTS_FILE, events)
    plot_trajectory(trajectory, summary, run_dir / PLOT_FILE, events["jumps"])
    write_json_atomic(run_dir / SUMMARY_FILE, summary)
    return summary, events


def read_run(run_dir: str | Path) -> tuple[dict, pd.DataFrame]:
    """(summary, trajectory) of a complete run directory, or a one-line error."""
    run_dir = Path(run_dir)
    summary_path = run_dir / SUMMARY_FILE
    trajectory_path = run_dir / TRAJECTORY_FILE
    if not run_dir.is_dir():
        raise PhantomLensError(f"run directory {run_dir} does not exist")
    if not summary_path.is_file() or not trajectory_path.is_file():
        raise PhantomLensError(
            f"{run_dir} is not a complete phantomlens run (no {SUMMARY_FILE} or {TRAJECTORY_FILE})"
        )
    return read_json(summary_path, "run summary"), pd.read_parquet(trajectory_path)
