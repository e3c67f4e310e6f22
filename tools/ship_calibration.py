"""Ship the calibration: κ fitted on the stored benchmark sweeps, as package data.

    python -m tools.ship_calibration           # writes src/phantomlens/data/calibration.json
    python -m tools.ship_calibration --check   # exit 1 when that file is not what the sweeps give

Reads every sweep under benchmarks/results/sweeps/ (seconds; nothing is trained) and keeps what a
prediction needs: κ per mode/optimiser/variant with its spread and the domain it was fitted on
(mode, optimiser, schedule, T, warm-up fraction), the blind test, and the best variant per mode.
A variant whose κ moved less than its own spread across the step budgets and schedules of
``python -m tools.kappa_domain`` (results/kappa-domain/kappa_domain.json) has its domain widened to
them, for the mode the study measured.
Sweeps are named relative to the repository, so the file holds no path of the machine that made it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "benchmarks" / "results" / "sweeps"
TARGET = ROOT / "src" / "phantomlens" / "data" / "calibration.json"
COMMAND = "python -m tools.ship_calibration"
DOMAIN_STUDY = ROOT / "results" / "kappa-domain" / "kappa_domain.json"


def best_variants(blind: list[dict]) -> dict[str, dict]:
    """Per mode/optimiser, the variant with the lowest median blind-test error (mean over the
    held-out models), with every variant's figure beside it."""
    errors: dict[str, dict[str, list[float]]] = {}
    for row in blind:
        mode_optimizer, variant = row["key"].rsplit("/", 1)
        errors.setdefault(mode_optimizer, {}).setdefault(variant, []).append(row["median_abs_error"])
    best = {}
    for mode_optimizer, by_variant in sorted(errors.items()):
        means = {v: sum(e) / len(e) for v, e in sorted(by_variant.items())}
        best[mode_optimizer] = {"variant": min(means, key=means.get), "mean_of_median_abs_errors": means}
    return best


def widen_domains(kappa: dict, study: Path = DOMAIN_STUDY) -> None:
    """Widen, in place, the domain of each κ the domain study found invariant (see the module doc)."""
    import math

    if not study.is_file():
        return
    found = json.loads(study.read_text())
    schedules = sorted({d["schedule"] for d in _domains(found)})
    steps = sorted({d["steps"] for d in _domains(found)})
    for summary in found["summary"]:
        key = f"{found['mode']}/adamw/{summary['variant']}"
        entry = kappa.get(key)
        if entry is None or summary["max_over_min"] > math.exp(entry["log_std"]):
            continue
        fitted = entry["domain"][0]
        entry["domain"] = [{**fitted, "schedule": schedules, "steps": [steps[0], steps[-1]]}]
        entry["widened_by"] = (
            f"{study.relative_to(ROOT)}: κ moved by a factor {summary['max_over_min']:.3f} across "
            f"{', '.join(summary['domains'])}, within its spread e^σ = {math.exp(entry['log_std']):.3f}"
        )


def _domains(found: dict) -> list[dict]:
    return [{"schedule": r["schedule"], "steps": r["steps"]} for r in found["rows"]]


def build(sweeps: Path = SWEEPS) -> dict:
    """The shipped calibration's contents, from the sweeps stored under ``sweeps``."""
    from phantomlens.calibrate import calibrate

    dirs = sorted(d for d in sweeps.iterdir() if (d / "critical_lr.parquet").is_file())
    result = calibrate(dirs, relative_to=ROOT)
    widen_domains(result["kappa"])
    return {
        "command": COMMAND,
        "about": "κ per mode/optimizer/variant fitted on the sweeps below (docs/critical-lr.md); "
        "phantomlens predict applies a κ only to runs inside its domain",
        "sweeps": result["sweeps"],
        "kappa": result["kappa"],
        "blind": result["blind"],
        "best_variant": best_variants(result["blind"]),
    }


def main() -> int:
    from phantomlens.atomic import strict_json, write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    shipped = build()
    if args.check:
        same = TARGET.is_file() and json.loads(TARGET.read_text()) == json.loads(strict_json(shipped))
        print(f"{TARGET.relative_to(ROOT)} {'matches' if same else 'differs from'} the stored sweeps")
        return 0 if same else 1
    write_json_atomic(TARGET, shipped)
    print(f"written {TARGET.relative_to(ROOT)}: {', '.join(shipped['kappa'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
