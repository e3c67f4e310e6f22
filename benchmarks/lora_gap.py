"""Why the closed-form predictions miss under LoRA: the two-point margin path against a real run.

    python -m benchmarks.lora_gap                      # SmolLM2-135M, LoRA and full, 12 contexts
    python -m benchmarks.lora_gap --report             # print the summary from the JSON

For each context of the stored sweeps, one real run (T = 50, cosine, AdamW) at the measured η_c,
and the two-point variant's margin path at the same LR from the sweep's stored κ = 1 prediction:
m̂_t = m_0 + η·A_0·P_t + η²·G·Q_t (P_t = Σ_{k<t} s_k, Q_t = Σ_{k<t} s_k·P_k). The gap m_t − m̂_t is
split by where it accumulates: the warm-up (the first ⌈0.1·T⌉ updates, where LoRA's B leaves 0 and
Adam's normalisation starts A moving), the middle, and the schedule's tail (the last 30% of
updates, where s_t is small). Writes benchmarks/results/lora_gap.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SWEEPS = RESULTS / "sweeps"
OUT = RESULTS / "lora_gap.json"
TAIL = 0.3


def two_point_path(prediction, eta: float, factors: list[float]) -> list[float]:
    """m̂ after each of the T updates (index t: after t updates, t = 0..T)."""
    prefix, total = [], 0.0
    for factor in factors:
        prefix.append(total)
        total += factor
    weighted = sum(f * p for f, p in zip(factors, prefix, strict=True))
    curvature = (prediction.two_point_quadratic or 0.0) / weighted if weighted else 0.0
    path, linear, quadratic = [prediction.margin_initial], 0.0, 0.0
    for factor, before in zip(factors, prefix, strict=True):
        linear += factor
        quadratic += factor * before
        path.append(prediction.margin_initial + eta * prediction.margin_velocity * linear + eta**2 * curvature * quadratic)
    return path


def split(gap: list[float], steps: int, warmup: int) -> dict[str, float]:
    """How much of the final gap each phase added (gap[t]: after t updates)."""
    tail_start = steps - math.ceil(TAIL * steps)
    return {
        "warmup": gap[warmup] - gap[0],
        "middle": gap[tail_start] - gap[warmup],
        "tail": gap[steps] - gap[tail_start],
    }


def measure(model: str, mode: str) -> list[dict]:
    import pandas as pd

    from phantomlens.models import load_model
    from phantomlens.results import load_prediction
    from phantomlens.session import schedule_factors
    from phantomlens.train import finetune

    table = pd.read_parquet(SWEEPS / f"{model}-{mode}" / "critical_lr.parquet")
    base, tokenizer = load_model(model)
    factors = schedule_factors(50, "cosine", 0.1)
    warmup = math.ceil(0.1 * 50)
    rows = []
    for row in table.itertuples():
        path = SWEEPS / f"{model}-{mode}" / "predictions" / model / mode / f"{row.context}.json"
        prediction = load_prediction(path)
        if not (row.eta_c == row.eta_c and prediction.two_point_quadratic is not None):
            continue
        eta = float(row.eta_c)
        print(f"{model} {mode} {row.context} at η_c = {eta:.4g}", flush=True)
        run = finetune(model=__import__("copy").deepcopy(base), tokenizer=tokenizer, mode=mode, context=row.context, lr=eta, progress=False)
        actual = run.trajectory["margin"].tolist()
        predicted = two_point_path(prediction, eta, factors)
        gap = [a - p for a, p in zip(actual, predicted, strict=True)]
        rows.append(
            {
                "model": model,
                "mode": mode,
                "context": row.context,
                "eta_c": eta,
                "margin_final": actual[-1],
                "two_point_final": predicted[-1],
                "gap_final": gap[-1],
                "gap_by_phase": split(gap, 50, warmup),
                "actual": actual,
                "two_point": predicted,
            }
        )
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for mode in sorted({r["mode"] for r in rows}):
        group = [r for r in rows if r["mode"] == mode]
        out.append(
            {
                "mode": mode,
                "contexts": len(group),
                "median_gap_final": statistics.median(r["gap_final"] for r in group),
                **{
                    f"median_{phase}": statistics.median(r["gap_by_phase"][phase] for r in group)
                    for phase in ("warmup", "middle", "tail")
                },
                "positive_gaps": sum(r["gap_final"] > 0 for r in group),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    import json

    from phantomlens.atomic import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--modes", nargs="+", default=["lora", "full"])
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    if args.report:
        rows = json.loads(OUT.read_text())["rows"]
    else:
        rows = [r for mode in args.modes for r in measure(args.model, mode)]
        write_json_atomic(OUT, {"command": "python -m benchmarks.lora_gap", "rows": rows, "summary": summary(rows)})
    for s in summary(rows):
        print(json.dumps(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
