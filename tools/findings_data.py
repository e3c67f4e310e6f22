"""The stored results docs/findings.md draws on, read into tables (through ``phantomlens.results``).

Nothing here runs a model: every function reads what the sweeps, grids, run directories and
benchmarks stored. ``load_stored()`` gathers it all for ``tools.claims``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks import critical_lr, early_stop
from phantomlens.results import (
    DEFAULT_VARIANT,
    find_run_dirs,
    load_run_events,
    load_run_summary,
    load_sweep_records,
)
from tools import phantoms_demo
from tools.fmt import add_seconds

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "findings.md"
FIGURES_DIR = ROOT / "docs" / "figures"
MODES = ["full", "lora"]
#: The models `make findings` runs everything on (showcases, range tests, early stopping, grids).
CORE_MODELS = ["smollm2-135m", "gemma3-270m"]
#: The models every finding is computed on: the core two, and the optional third wherever its sweeps
#: are stored (it needs `make qwen` and long runs, so `make findings` never starts them).
MODELS = [*CORE_MODELS, *(m for m in critical_lr.OPTIONAL_MODELS if critical_lr.swept(m, MODES))]
#: How the prose names each model.
MODEL_NAMES = {"smollm2-135m": "SmolLM2", "gemma3-270m": "Gemma", "qwen2.5-0.5b": "Qwen"}
#: A fixed-LR column on every sweep context, high enough to find where AdamW diverges.
GRID_LRS = [1.0]
GRIDS = ROOT / "results" / "grid"
GPU_CHECK = ROOT / "results" / "gpu-check" / "smollm2-full-shame"
#: The same run (the default demo) on the CPU, which the GPU check is compared with.
GPU_CHECK_CPU = phantoms_demo.RUNS / "smollm2-full-shame-1e-06"
FAILURES = ("kinematic", "structural")


def sweep_contexts() -> list[str]:
    from phantomlens.contexts import builtin_contexts

    return [c.name for c in builtin_contexts()[: critical_lr.N_CONTEXTS]]


def model_contexts(model: str) -> list[str]:
    """The first N built-in contexts valid for ``model`` (its sweeps' contexts: a context whose
    competitor does not out-rank the target at step 0 on that model is skipped)."""
    from phantomlens.contexts import builtin_contexts
    from phantomlens.models import BUILTIN_MODELS

    invalid = BUILTIN_MODELS[model].invalid_contexts if model in BUILTIN_MODELS else ()
    return [c.name for c in builtin_contexts() if c.name not in invalid][: critical_lr.N_CONTEXTS]


def sweep_records(root: Path = critical_lr.SWEEPS, source: str = "sweep") -> pd.DataFrame:
    """Run records of the sweeps (or, with ``root=GRIDS``, of the fixed-LR grids), one row each."""
    rows = []
    for model in MODELS:
        for mode in MODES:
            directory = root / f"{model}-{mode}"
            for record in load_sweep_records(directory / "runs"):
                rows.append(
                    {
                        "source": source,
                        "model": model,
                        "mode": mode,
                        "optimizer": record.optimizer,
                        "context": record.context,
                        "lr": record.lr,
                        "steps": record.run.get("steps"),
                        "schedule": record.run.get("schedule"),
                        "seed": record.run.get("seed"),
                        "outcome": record.outcome,
                        "silent": record.silent,
                        "n_jumps": record.n_jumps,
                        "n_phantom_jumps": record.n_phantom_jumps,
                        "n_symmetry_breaking_jumps": None,
                        "embeddings_unchanged": record.embeddings_unchanged,
                        "loss_initial": record.loss_initial,
                        "loss_final": record.loss_final,
                        "drag_change": record.drag_change,
                    }
                )
    return pd.DataFrame(rows)


def run_directories() -> pd.DataFrame:
    """Every stored run directory (phantom showcases and scans, early-stopping runs), with its jumps."""
    rows = []
    for directory in find_run_dirs(phantoms_demo.RUNS) + find_run_dirs(early_stop.RUNS):
        s, events = load_run_summary(directory), load_run_events(directory)
        rows.append(
            {
                "source": "early-stop" if early_stop.RUNS in directory.parents else "phantoms",
                "model": s.config["model"],
                "mode": s.config["mode"],
                "optimizer": s.config["optimizer"],
                "context": s.config["context"],
                "lr": float(s.config["lr"]),
                "steps": s.config["steps"],
                "schedule": s.config["schedule"],
                "seed": s.config["seed"],
                "outcome": s.outcome,
                "silent": s.silent,
                "n_jumps": events.n_jumps,
                "n_phantom_jumps": events.n_phantom_jumps,
                "n_symmetry_breaking_jumps": events.n_symmetry_breaking_jumps,
                "embeddings_unchanged": s.embeddings_unchanged,
                "loss_initial": s.loss_initial,
                "loss_final": s.loss_final,
                "drag_change": events.outcome_detail.drag_change,
                "path": str(directory.relative_to(ROOT)),
                "jumps": events.jumps,
            }
        )
    return pd.DataFrame(rows)


def critical_table() -> pd.DataFrame:
    rows = []
    for model in MODELS:
        for mode in MODES:
            path = critical_lr.SWEEPS / f"{model}-{mode}" / "critical_lr.parquet"
            if path.is_file():
                rows.append(pd.read_parquet(path))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def compute_seconds() -> dict[str, float]:
    """The stored runs' own wall-clock times per device: sweeps, grids, run directories, range tests."""
    seconds: dict[str, float] = {}
    for root in (critical_lr.SWEEPS, GRIDS):
        for record in load_sweep_records(root):
            add_seconds(seconds, record.device, record.wall_time_s)
    for directory in find_run_dirs(phantoms_demo.RUNS) + find_run_dirs(early_stop.RUNS):
        summary = load_run_summary(directory)
        add_seconds(seconds, summary.device, summary.wall_time_s)
    ranges = critical_lr.RESULTS / "range_tests.json"
    for test in json.loads(ranges.read_text()) if ranges.is_file() else []:
        add_seconds(seconds, "cpu", test["wall_time_s"])
    return seconds


@dataclass
class GpuCheck:
    """The default demo run on a GPU and on the CPU: how far apart, and how long each took."""

    max_margin_difference: float
    gpu_seconds: float
    cpu_seconds: float


def gpu_check() -> GpuCheck | None:
    from phantomlens.results import load_trajectory

    if not (GPU_CHECK / "summary.json").is_file() or not (GPU_CHECK_CPU / "summary.json").is_file():
        return None
    gpu, cpu = load_trajectory(GPU_CHECK), load_trajectory(GPU_CHECK_CPU)
    return GpuCheck(
        max_margin_difference=float((gpu["margin"] - cpu["margin"]).abs().max()),
        gpu_seconds=load_run_summary(GPU_CHECK).wall_time_s,
        cpu_seconds=load_run_summary(GPU_CHECK_CPU).wall_time_s,
    )


def blind_predictions(calibration: dict) -> pd.DataFrame:
    """The blind predictions of the default variant per context (κ calibrated on the other model),
    with their mode."""
    blind = pd.DataFrame(
        [b for b in calibration.get("blind_per_context", []) if b["key"].endswith(f"/{DEFAULT_VARIANT}")]
    )
    if not len(blind):
        return pd.DataFrame(columns=["model", "mode", "context", "eta_c_predicted"])
    blind["mode"] = blind["key"].str.split("/").str[0]
    return blind


@dataclass
class Stored:
    """Everything the findings are computed from."""

    runs: pd.DataFrame  # one row per stored run: sweeps, grids and run directories
    dirs: pd.DataFrame  # the run directories alone, with their jumps
    critical: pd.DataFrame  # the sweeps' critical-LR tables
    calibration: dict  # benchmarks/results/calibration.json
    result: dict  # benchmarks/results/critical_lr.json
    stops: dict  # benchmarks/results/early_stop.json
    blind: pd.DataFrame
    seconds: dict[str, float]
    gpu: GpuCheck | None


def load_stored() -> Stored:
    dirs = run_directories()
    frames = [sweep_records(), sweep_records(GRIDS, "grid"), dirs.drop(columns=["jumps"])]
    calibration = json.loads((critical_lr.RESULTS / "calibration.json").read_text())
    return Stored(
        runs=pd.concat([f for f in frames if len(f)], ignore_index=True),
        dirs=dirs,
        critical=critical_table(),
        calibration=calibration,
        result=json.loads((critical_lr.RESULTS / "critical_lr.json").read_text()),
        stops=json.loads((early_stop.RESULTS / "early_stop.json").read_text()),
        blind=blind_predictions(calibration),
        seconds=compute_seconds(),
        gpu=gpu_check(),
    )
