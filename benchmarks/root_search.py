"""η_c in about four runs: the root search on the final margin against the stored bisection sweeps.

    python -m benchmarks.root_search             # the replay: seconds, no training
    python -m benchmarks.root_search --live 3    # and the root search for real on 3 SmolLM2 LoRA contexts

1. Dry run on the stored sweeps (no new training; unrelated to the replay prediction). For each
   of the 48 stored bisection sweeps (2 models × 2 modes × 12
   contexts, ``benchmarks/results/sweeps/``), m_T(η) is INTERPOLATED from that context's stored
   runs: a monotone cubic (Fritsch–Carlson) through (ln η, m_T) of every run, below the lowest run
   a straight line in η from m_0 at η = 0, above the highest a straight line in η through the last
   two. Both searches (``plan`` with ``search="root"`` and ``"bisect"``) are driven on that curve
   from the start a sweep uses now (the stored κ = 1 two-point prediction, else simulated), and
   from the two older starts (simulated; first-order, where the stored sweeps started). A replay
   counts runs and checks the answer; it is not a measurement of new runs.
2. ``--live N``: a real ``phantomlens sweep --search root`` of SmolLM2-135M LoRA on the first N
   contexts (T = 50, cosine, AdamW, no η_max), in ``benchmarks/results/sweeps-root/`` (resumable;
   the stored predictions are reused, so it starts where the replay does), compared with the
   stored bisection.

Agreement: the root search's η_c (its lowest success, as the bisection's) within the tolerance of
the stored η_c, and its bracket overlapping the stored one (both contain the true η_c).
Writes benchmarks/results/root_search.json.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from phantomlens.lrsearch import Point, plan
from phantomlens.results import FAILURE, SUCCESS, load_prediction, load_sweep_records
from phantomlens.settings import SweepConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SWEEPS = RESULTS / "sweeps"
LIVE = RESULTS / "sweeps-root"
OUT = RESULTS / "root_search.json"
NAMES = ["smollm2-135m-lora", "smollm2-135m-full", "gemma3-270m-lora", "gemma3-270m-full"]
#: The starts replayed: the prediction variant each takes (the first that exists).
STARTS = {
    "two-point": ("eta_c_two_point", "eta_c_simulated"),  # a sweep's start now
    "simulated": ("eta_c_simulated",),  # its start before the root search
    "first-order": ("eta_c_first_order",),  # where the stored sweeps started
}
GOAL = 4  # median runs per context (issue 14)


def monotone_cubic(xs: list[float], ys: list[float]) -> Callable[[float], float]:
    """Fritsch–Carlson: a piecewise cubic through the points that adds no wiggle between them."""
    h = [b - a for a, b in pairwise(xs)]
    d = [(y2 - y1) / w for y1, y2, w in zip(ys, ys[1:], h, strict=False)]
    s = [d[0], *([0.0] * (len(xs) - 2)), d[-1]]
    for i in range(1, len(xs) - 1):
        if d[i - 1] * d[i] > 0:
            w1, w2 = 2 * h[i] + h[i - 1], h[i] + 2 * h[i - 1]
            s[i] = (w1 + w2) / (w1 / d[i - 1] + w2 / d[i])

    def f(x: float) -> float:
        i = max(0, min(len(xs) - 2, sum(1 for v in xs if v <= x) - 1))
        u = (x - xs[i]) / h[i]
        return (
            (2 * u**3 - 3 * u**2 + 1) * ys[i]
            + (u**3 - 2 * u**2 + u) * h[i] * s[i]
            + (-2 * u**3 + 3 * u**2) * ys[i + 1]
            + (u**3 - u**2) * h[i] * s[i + 1]
        )

    return f


def margin_curve(runs: list[tuple[float, float]], m0: float) -> Callable[[float], float]:
    """m_T(η) interpolated from the stored (η, m_T) runs of one context (see the module's text)."""
    runs = sorted(runs)
    inner = monotone_cubic([math.log(lr) for lr, _ in runs], [m for _, m in runs])
    (low, m_low), (top1, m1), (top2, m2) = runs[0], runs[-2], runs[-1]

    def m(lr: float) -> float:
        if lr < low:
            return m0 + (m_low - m0) * lr / low
        if lr > top2:
            return m2 + (m2 - m1) / (top2 - top1) * (lr - top2)
        return inner(math.log(lr))

    return m


def search(curve: Callable[[float], float], m0: float, start: float, config: SweepConfig) -> tuple:
    """Drive ``plan`` on the curve to its end: (its last plan, the LRs it ran, in order)."""
    records: dict[float, Point] = {}
    while (step := plan(records, start, config)).next_lr is not None:
        margin = curve(step.next_lr)
        records[step.next_lr] = Point(SUCCESS if margin > 0 else FAILURE, margin, m0)
        if len(records) > 100:
            raise RuntimeError("the search did not end")
    return step, list(records)


def stored_context(directory: Path, context: Path) -> dict:
    """One stored context: its runs, m_0, prediction and bisection answer."""
    records = load_sweep_records(context)
    model, mode = context.parent.parent.name, context.parent.name
    prediction = load_prediction(directory / "predictions" / model / mode / f"{context.name}.json")
    successes = sorted(r.lr for r in records if r.verdict == SUCCESS)
    high = successes[0]
    low = max(r.lr for r in records if r.lr < high)
    return {
        "context": context.name,
        "runs": [(r.lr, r.margin_final) for r in records],
        "m0": records[0].margin_initial,
        "prediction": prediction,
        "stored": {"eta_c": high, "bracket_low": low, "bracket_high": high, "runs": len(records)},
    }


def replay_context(item: dict, tolerance: float) -> dict:
    """Both searches on one context's interpolated curve, from each start."""
    curve = margin_curve(item["runs"], item["m0"])
    stored, row = item["stored"], {"context": item["context"], "stored": item["stored"]}
    for name, fields in STARTS.items():
        start = next((v for f in fields if (v := getattr(item["prediction"], f))), None)
        if not start:
            continue
        found = {"start": start}
        for kind in ("root", "bisect"):
            step, tried = search(curve, item["m0"], start, SweepConfig(search=kind, eta_max=False))
            found[kind] = {
                "runs": len(tried),
                "eta_c": step.eta_c,
                "bracket": [step.bracket_low, step.bracket_high],
                "lrs": tried,
                "agrees": agrees(step.bracket_low, step.bracket_high, stored, tolerance),
                "inside_stored": stored["bracket_low"] < step.eta_c <= stored["bracket_high"],
            }
        row[name] = found
    return row


def agrees(low: float | None, high: float | None, stored: dict, tolerance: float) -> bool:
    """Same η_c within the tolerance, and brackets that overlap (both hold the true η_c)."""
    if low is None or high is None:
        return False
    close = abs(high / stored["eta_c"] - 1) <= tolerance
    return close and low < stored["bracket_high"] and stored["bracket_low"] < high


def replay(tolerance: float) -> dict:
    rows = {}
    for name in NAMES:
        directory = SWEEPS / name
        contexts = sorted(p for p in directory.glob("runs/*/*/*") if p.is_dir())
        rows[name] = [replay_context(stored_context(directory, c), tolerance) for c in contexts]
    return rows


def summary(rows: list[dict]) -> dict:
    """Per start and search: median, mean and max runs, and agreement with the stored sweeps."""
    out = {}
    for start in STARTS:
        for kind in ("root", "bisect"):
            found = [r[start][kind] for r in rows if start in r]
            runs = [f["runs"] for f in found]
            out[f"{start}/{kind}"] = {
                "contexts": len(found),
                "median_runs": statistics.median(runs),
                "mean_runs": round(statistics.mean(runs), 2),
                "max_runs": max(runs),
                "agree": sum(f["agrees"] for f in found),
                "inside_stored": sum(f["inside_stored"] for f in found),
            }
    return out


def live(n: int, tolerance: float) -> list[dict]:
    """A real root search on the first ``n`` SmolLM2 LoRA contexts, beside the stored bisection."""
    from phantomlens.sweep import Sweep

    stored_dir = SWEEPS / "smollm2-135m-lora"
    contexts = json.loads((stored_dir / "sweep.json").read_text())["contexts"][:n]
    out = LIVE / "smollm2-135m-lora"
    for context in contexts:  # the stored κ = 1 predictions: the same start as the replay's
        source = stored_dir / "predictions" / "smollm2-135m" / "lora" / f"{context}.json"
        target = out / "predictions" / "smollm2-135m" / "lora" / f"{context}.json"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    config = SweepConfig.from_dict(
        {"model": "smollm2-135m", "mode": "lora", "contexts": contexts, "eta_max": False, "workers": 1}
    )
    started = time.perf_counter()
    table = Sweep(config, out).run()
    print(f"live: {len(contexts)} contexts in {time.perf_counter() - started:.0f} s", flush=True)
    return [live_row(row, stored_dir, tolerance) for row in table.to_dict(orient="records")]


def live_row(row: dict, stored_dir: Path, tolerance: float) -> dict:
    context = stored_dir / "runs" / "smollm2-135m" / "lora" / row["context"]
    stored = stored_context(stored_dir, context)["stored"]
    records = load_sweep_records(
        LIVE / "smollm2-135m-lora" / "runs" / "smollm2-135m" / "lora" / row["context"]
    )
    return {
        "context": row["context"],
        "search": row["search"],
        "runs": row["runs_eta_c"],
        "eta_c": row["eta_c"],
        "bracket": [row["bracket_low"], row["bracket_high"]],
        "lrs": [r.lr for r in records],
        "wall_time_s": round(sum(r.wall_time_s for r in records), 1),
        "device": records[0].device if records else None,
        "stored": stored,
        "ratio_to_stored": row["eta_c"] / stored["eta_c"] if row["eta_c"] else None,
        "agrees": agrees(row["bracket_low"], row["bracket_high"], stored, tolerance),
    }


def main() -> int:
    from phantomlens.atomic import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", type=int, default=0, metavar="N", help="also search N contexts for real")
    args = parser.parse_args()
    tolerance = SweepConfig().tolerance
    rows = replay(tolerance)
    every = [r for found in rows.values() for r in found]
    before = json.loads(OUT.read_text()) if OUT.is_file() else {}
    result = {
        "what": "replay on margins interpolated from the stored bisection sweeps (no new training)",
        "tolerance": tolerance,
        "goal_median_runs": GOAL,
        "summary": summary(every),
        "by_sweep": {name: summary(found) for name, found in rows.items()},
        "contexts": rows,
        "live": live(args.live, tolerance) if args.live else before.get("live"),
    }
    write_json_atomic(OUT, result)
    print(json.dumps({k: result[k] for k in ("what", "summary")}, indent=2))
    if result["live"]:
        for r in result["live"]:
            print(
                f"live {r['context']}: {r['runs']} runs, η_c {r['eta_c']:.4g} (stored {r['stored']['eta_c']:.4g}, "
                f"{r['stored']['runs']} runs), agrees: {r['agrees']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
