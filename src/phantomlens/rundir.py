"""A run directory: config.json, trajectory.parquet, summary.json, trajectory.png.

The directory is filled in a hidden staging folder and renamed into place at the end, so it is
either complete or absent. ``summary.json`` is the marker of a complete run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from phantomlens.atomic import staged_directory, write_json_atomic
from phantomlens.errors import PhantomLensError

CONFIG_FILE = "config.json"
TRAJECTORY_FILE = "trajectory.parquet"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "trajectory.png"


def write_run(out: Path, config, result, overwrite: bool = False) -> Path:
    from phantomlens.plot import plot_trajectory

    with staged_directory(out, overwrite=overwrite) as staging:
        write_json_atomic(
            staging / CONFIG_FILE,
            {**config.to_dict(), "context_resolved": result.summary["context"]},
        )
        result.trajectory.to_parquet(staging / TRAJECTORY_FILE, index=False)
        plot_trajectory(result.trajectory, result.summary, staging / PLOT_FILE)
        summary = {**result.summary, "out_dir": str(out)}
        write_json_atomic(staging / SUMMARY_FILE, summary)
    return out


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
    try:
        summary = json.loads(summary_path.read_text())
    except ValueError as exc:
        raise PhantomLensError(f"{summary_path} is not valid JSON ({exc})") from None
    return summary, pd.read_parquet(trajectory_path)
