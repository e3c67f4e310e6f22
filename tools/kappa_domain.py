"""Is κ dimensionless? κ_i = η̂_c(κ = 1) / η_c per variant, across step budgets T and schedules.

    python -m tools.kappa_domain             # run what is missing (resumable), then summarise
    python -m tools.kappa_domain --doc-only  # summarise the stored sweeps only

One model (SmolLM2-135M), LoRA, AdamW, four contexts (shame, tale, trousers, chilly), five domains:
cosine at T = 20, 50 and 100, and linear and constant at T = 50. The T = 50 cosine sweeps are the
benchmark's (benchmarks/results/sweeps/smollm2-135m-lora); the others live in results/kappa-domain/.
A sweep's stored prediction is made again when it lacks the replay variant
(``--refresh-predictions``). Writes results/kappa-domain/kappa_domain.json, which docs/critical-lr.md reads.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "results" / "kappa-domain"
OUT = HERE / "kappa_domain.json"
MODEL, MODE = "smollm2-135m", "lora"
CONTEXTS = ["shame", "tale", "trousers", "chilly"]
#: domain name → (sweep directory, schedule, T)
DOMAINS = {
    "cosine T=20": (HERE / f"{MODEL}-{MODE}-T20", "cosine", 20),
    "cosine T=50": (ROOT / "benchmarks" / "results" / "sweeps" / f"{MODEL}-{MODE}", "cosine", 50),
    "cosine T=100": (HERE / f"{MODEL}-{MODE}-T100", "cosine", 100),
    "linear T=50": (HERE / f"{MODEL}-{MODE}-linear", "linear", 50),
    "constant T=50": (HERE / f"{MODEL}-{MODE}-constant", "constant", 50),
}


def run_missing() -> None:
    """Each domain's sweep, resumed (new runs where missing, predictions redone where older)."""
    from phantomlens.settings import SweepConfig
    from phantomlens.sweep import Sweep
    from tools.findings_data import sweep_contexts

    for name, (out, schedule, steps) in DOMAINS.items():
        print(f"{name}: {out.relative_to(ROOT)}", flush=True)
        benchmark = out.parent.name == "sweeps"  # resumed with its own 12 contexts
        settings = {"model": MODEL, "mode": MODE, "schedule": schedule, "steps": steps, "eta_max": False}
        settings["refresh_predictions"] = True
        settings["contexts"] = sweep_contexts() if benchmark else CONTEXTS
        Sweep(SweepConfig.from_dict(settings), out).run()


def kappas() -> list[dict]:
    """One row per domain, context and variant: κ_i."""
    import pandas as pd

    from phantomlens.calibrate import VARIANT_COLUMNS as COLUMNS

    rows = []
    for name, (out, schedule, steps) in DOMAINS.items():
        path = out / "critical_lr.parquet"
        if not path.is_file():
            continue
        table = pd.read_parquet(path)
        for row in table[table["context"].isin(CONTEXTS)].itertuples():
            for variant, column in COLUMNS.items():
                predicted = getattr(row, column, None)
                if row.eta_c == row.eta_c and predicted and predicted == predicted:
                    rows.append(
                        {
                            "domain": name,
                            "schedule": schedule,
                            "steps": steps,
                            "context": row.context,
                            "variant": variant,
                            "eta_c": float(row.eta_c),
                            "kappa_i": float(predicted) / float(row.eta_c),
                        }
                    )
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per variant and domain: κ (geometric mean over the contexts) and its ratio to cosine T = 50;
    per variant: how far κ moves across the domains (max/min of the domain κ)."""
    from phantomlens.calibrate import VARIANT_COLUMNS

    out = []
    for variant in VARIANT_COLUMNS:
        of_variant = [r for r in rows if r["variant"] == variant]
        per_domain = {}
        for name in DOMAINS:
            values = [r["kappa_i"] for r in of_variant if r["domain"] == name]
            if values:
                per_domain[name] = {
                    "kappa": math.exp(statistics.fmean(math.log(v) for v in values)),
                    "contexts": len(values),
                    "log_std": statistics.pstdev([math.log(v) for v in values]) if len(values) > 1 else 0.0,
                }
        if not per_domain:
            continue
        values = [d["kappa"] for d in per_domain.values()]
        reference = per_domain.get("cosine T=50", {}).get("kappa")
        for d in per_domain.values():
            d["ratio_to_cosine_T50"] = d["kappa"] / reference if reference else None
        out.append(
            {
                "variant": variant,
                "domains": per_domain,
                "max_over_min": max(values) / min(values),
                "within_contexts_log_std": statistics.median(d["log_std"] for d in per_domain.values()),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    import json

    from phantomlens.atomic import write_json_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc-only", action="store_true", help="summarise the stored sweeps only")
    args = parser.parse_args(argv)
    if not args.doc_only:
        run_missing()
    rows = kappas()
    result = {"command": "python -m tools.kappa_domain", "model": MODEL, "mode": MODE, "contexts": CONTEXTS}
    result |= {"summary": summary(rows), "rows": rows}
    write_json_atomic(OUT, result)
    for s in result["summary"]:
        by_domain = {name: round(d["kappa"], 3) for name, d in s["domains"].items()}
        print(s["variant"], f"max/min {s['max_over_min']:.3f}", json.dumps(by_domain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
