"""Prediction error against passes: every variant, and the replay at several K, blind.

    python -m benchmarks.prediction_budget                         # every stored sweep, resumable
    python -m benchmarks.prediction_budget --models smollm2-135m --modes lora --refreshes 2 4 6
    python -m benchmarks.prediction_budget --report                # print the table from the JSON

For each context of the stored sweeps (benchmarks/results/sweeps/<model>-<mode>, whose measured η_c
is the truth), the κ = 1 prediction of first-order, simulated and two-point (one measurement), and
of the replay with K gradient measurements for each K asked, with the forward and backward passes
each spent and its wall time. The blind error of a variant on a model divides by κ fitted on the
other models' contexts only (geometric mean of η̂/η_c), as ``phantomlens calibrate``'s blind test.
Results per context go to benchmarks/results/prediction_budget.json (rewritten atomically after
each context; a rerun skips contexts already there with the same settings).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from phantomlens.results import DEFAULT_REFRESHES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SWEEPS = RESULTS / "sweeps"
OUT = RESULTS / "prediction_budget.json"
REFRESHES = [2, 4, 6, 8]
CLOSED_FORMS = {"first-order": "first_order", "simulated": "simulated", "two-point": "two_point"}
CLOSED_PASSES = {"first-order": 3, "simulated": 4, "two-point": 7}


def measure_context(base, tokenizer, model: str, mode: str, context: str, refreshes: list[int]) -> dict:
    """Every variant's κ = 1 η̂_c for one context, through ``predict_critical_lr`` itself."""
    from phantomlens.predict import predict_critical_lr

    row = {"model": model, "mode": mode, "context": context, "replay": {}}
    for k in [0, *refreshes]:
        stored = _stored_replay(model, mode, context) if k == DEFAULT_REFRESHES else None
        if stored is not None:
            row["replay"][str(k)] = stored
            continue
        started = time.perf_counter()
        prediction = predict_critical_lr(
            model=base, tokenizer=tokenizer, mode=mode, context=context, calibration=False, refreshes=k
        )
        seconds = time.perf_counter() - started
        if k == 0:
            row |= {
                "first-order": prediction.eta_c_first_order,
                "simulated": prediction.eta_c_simulated,
                "two-point": prediction.eta_c_two_point,
                "closed_form_seconds": seconds,
            }
            continue
        row["replay"][str(k)] = {
            "eta_c": prediction.eta_c_replay,
            "passes": sum(prediction.passes.values()),
            "replays_measured": sum(1 for point in prediction.replay_points or [] if point[2]),
            "points": prediction.replay_points,
            "seconds": seconds,
        }
    return row


def _stored_replay(model: str, mode: str, context: str) -> dict | None:
    """The sweep's own prediction, when it has the replay: it is this benchmark's at the default K
    (the same call, κ = 1), so it is read rather than computed twice. Its time was not recorded."""
    from phantomlens.results import load_prediction

    path = SWEEPS / f"{model}-{mode}" / "predictions" / model / mode / f"{context}.json"
    prediction = load_prediction(path) if path.is_file() else None
    if prediction is None or prediction.replay_refreshes != DEFAULT_REFRESHES:
        return None
    points = prediction.replay_points or []
    return {
        "eta_c": prediction.eta_c_replay,
        "passes": sum(prediction.passes.values()),
        "replays_measured": sum(1 for point in points if point[2]),
        "points": points,
        "seconds": None,
    }


def eta_c_of(model: str, mode: str) -> dict[str, float]:
    import pandas as pd

    table = pd.read_parquet(SWEEPS / f"{model}-{mode}" / "critical_lr.parquet")
    return {row.context: float(row.eta_c) for row in table.itertuples() if row.eta_c == row.eta_c}


def run(models: list[str], modes: list[str], refreshes: list[int]) -> list[dict]:

    from phantomlens.atomic import write_json_atomic
    from phantomlens.models import load_model

    rows = _load()
    for model in models:
        base = tokenizer = None
        for mode in modes:
            truth = eta_c_of(model, mode)
            for context in truth:
                done = _find(rows, model, mode, context)
                if done and all(str(k) in done["replay"] for k in refreshes):
                    continue
                if base is None:
                    base, tokenizer = load_model(model)
                print(f"{model} {mode} {context}", flush=True)
                row = measure_context(base, tokenizer, model, mode, context, refreshes)
                row["eta_c"] = truth[context]
                if done:
                    row["replay"] = {**done["replay"], **row["replay"]}
                    rows.remove(done)
                rows.append(row)
                write_json_atomic(OUT, {"command": "python -m benchmarks.prediction_budget", "rows": rows})
    return rows


def _load() -> list[dict]:
    import json

    return json.loads(OUT.read_text())["rows"] if OUT.is_file() else []


def _find(rows: list[dict], model: str, mode: str, context: str) -> dict | None:
    return next((r for r in rows if (r["model"], r["mode"], r["context"]) == (model, mode, context)), None)


def variants(row: dict) -> dict[str, tuple[float | None, float]]:
    """variant name → (κ = 1 η̂_c, passes) for one context."""
    out = {name: (row[name], CLOSED_PASSES[name]) for name in CLOSED_PASSES}
    for k, replay in row["replay"].items():
        out[f"replay K={k}"] = (replay["eta_c"], replay["passes"])
    return out


def blind_table(rows: list[dict]) -> list[dict]:
    """Per mode, variant and held-out model: the median and max blind |error| and median passes."""
    table = []
    for mode in sorted({r["mode"] for r in rows}):
        in_mode = [r for r in rows if r["mode"] == mode]
        models = sorted({r["model"] for r in in_mode})
        names = sorted({n for r in in_mode for n in variants(r)}, key=_order)
        for name in names:
            for held_out in models:
                train = [r for r in in_mode if r["model"] != held_out and _ok(variants(r).get(name))]
                test = [r for r in in_mode if r["model"] == held_out and _ok(variants(r).get(name))]
                if not train or not test:
                    continue
                kappa = math.exp(statistics.fmean(math.log(variants(r)[name][0] / r["eta_c"]) for r in train))
                errors = [abs(variants(r)[name][0] / kappa / r["eta_c"] - 1) for r in test]
                table.append(
                    {
                        "mode": mode,
                        "variant": name,
                        "held_out": held_out,
                        "contexts": len(test),
                        "kappa": kappa,
                        "median_abs_error": statistics.median(errors),
                        "max_abs_error": max(errors),
                        "median_passes": statistics.median(variants(r)[name][1] for r in test),
                        "max_passes": max(variants(r)[name][1] for r in test),
                    }
                )
    return table


def _ok(value) -> bool:
    return bool(value) and value[0] is not None and value[0] > 0


def _order(name: str) -> tuple:
    return (1, int(name.split("=")[1])) if name.startswith("replay") else (0, CLOSED_PASSES[name])


def report(rows: list[dict]) -> str:
    """The table docs/critical-lr.md shows (``critical_lr.budget_lines``), from these rows."""
    from benchmarks.critical_lr import budget_lines

    return "\n".join(budget_lines({"prediction_budget": blind_table(rows)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--modes", nargs="+", default=["lora", "full"])
    parser.add_argument("--refreshes", nargs="+", type=int, default=REFRESHES)
    parser.add_argument("--report", action="store_true", help="only print the table from the JSON")
    args = parser.parse_args(argv)
    rows = _load() if args.report else run(args.models, args.modes, args.refreshes)
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
