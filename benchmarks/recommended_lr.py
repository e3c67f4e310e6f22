"""How often `phantomlens predict`'s recommended LR really reaches margin_safe, on the stored sweeps.

    python -m benchmarks.recommended_lr                  # 48 predictions of 7 passes; each model loaded once
    python -m benchmarks.recommended_lr --models smollm2-135m --modes lora
    python -m benchmarks.recommended_lr --from-json      # re-evaluate the stored predictions, no model
    python -m benchmarks.recommended_lr --from-sweeps    # the sweeps' own κ = 1 predictions, no model

For every context of every stored sweep (benchmarks/results/sweeps/<model>-<mode>/, T = 50, cosine,
AdamW, seed 0: the settings the shipped calibration was fitted on), today's ``predict_critical_lr``
with its defaults gives the recommended LR (the smallest η whose predicted final margin reaches
``margin_safe`` with κ at the low end of its spread, κ·e^−σ). The sweep's own runs then say what
final margin a run at that LR reached: interpolated linearly in ln η between the two runs that
straddle it, "not covered" when none do (a bisection sweep's runs cluster around η_c, so an LR well
above it often lies beyond its highest run).

In-sample: κ and σ were fitted on these same contexts. The leave-one-model-out version recomputes
each recommendation with the blind test's κ (the geometric mean of κ_i over the other models'
contexts, ``calibrate.blind_test``) and σ over those same contexts, from the prediction's own margin
model (no further passes); the *central* version drops the e^σ safety factor (κ's central value
alone, the rule before it). Writes benchmarks/results/recommended_lr.json; the numbers appear in
docs/critical-lr.md ("Which prediction to use") after ``python -m benchmarks.critical_lr --doc-only``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from itertools import pairwise
from pathlib import Path

from phantomlens.results import DIVERGED, load_sweep_records

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SWEEPS = RESULTS / "sweeps"
OUT = RESULTS / "recommended_lr.json"
MODELS = ["smollm2-135m", "gemma3-270m"]
MODES = ["lora", "full"]
#: What the margin model of a stored prediction needs to be rebuilt (the blind recommendation).
PREDICTION_FIELDS = (
    "variant",
    "eta_c",
    "eta_recommended",
    "kappa",
    "kappa_log_std",
    "kappa_source",
    "margin_safe",
    "margin_initial",
    "margin_velocity",
    "schedule_sum",
    "two_point_quadratic",
    "eta_c_replay",
    "variant_note",
)


def margin_at(runs: list[tuple[float, float]], lr: float) -> float | None:
    """The final margin at ``lr`` from runs (η, m_T): linear in ln η between the two runs that
    straddle ``lr`` (a run at ``lr`` itself gives its own margin); None when no two runs straddle it.

    Runs with a non-finite margin are left out (a diverged run's margin says nothing about m_T).
    """
    points = sorted((x, m) for x, m in runs if x > 0 and math.isfinite(m))
    for x, m in points:
        if x == lr:
            return m
    for (x1, m1), (x2, m2) in pairwise(points):
        if x1 < lr < x2:
            u = (math.log(lr) - math.log(x1)) / (math.log(x2) - math.log(x1))
            return m1 + u * (m2 - m1)
    return None


def monotone(runs: list[tuple[float, float]]) -> bool:
    """Whether the final margin never falls from one run to the next higher LR."""
    margins = [m for _, m in sorted(runs) if math.isfinite(m)]
    return all(b >= a for a, b in pairwise(margins))


def sweep_runs(directory: Path) -> dict[str, list[tuple[float, float]]]:
    """(η, m_T) of every run of a sweep that finished, per context (diverged runs left out)."""
    runs: dict[str, list[tuple[float, float]]] = {}
    for record in load_sweep_records(directory / "runs"):
        if record.verdict != DIVERGED:
            runs.setdefault(record.run["context"], []).append((record.lr, record.margin_final))
    return runs


def predict_sweep(name: str, model, tokenizer) -> list[dict]:
    """Today's default prediction for every context of one sweep, with the sweep's run settings."""
    from phantomlens.predict import predict_critical_lr
    from phantomlens.settings import RunConfig

    settings = json.loads((SWEEPS / name / "sweep.json").read_text())
    rows = []
    for context in settings["contexts"]:
        started = time.perf_counter()
        config = RunConfig(
            context=context,
            mode=settings["mode"],
            steps=settings["steps"],
            schedule=settings["schedule"],
            optimizer=settings["optimizer"],
            seed=settings["seed"],
        )
        prediction = predict_critical_lr(config, model=model, tokenizer=tokenizer)
        fields = {key: getattr(prediction, key) for key in PREDICTION_FIELDS}
        fields["replay_reach"] = _replay_reach(prediction)
        seconds = round(time.perf_counter() - started, 1)
        rows.append(
            {"sweep": name, "model": settings["model"], "mode": settings["mode"], "context": context}
            | fields
            | {"passes": sum(prediction.passes.values()), "seconds": seconds}
        )
        print(f"{name} {context}: recommended {fields['eta_recommended']} ({seconds} s)", flush=True)
    return rows


def predict_all(models: list[str], modes: list[str], threads: int) -> list[dict]:
    import torch

    from phantomlens.models import load_model

    torch.set_num_threads(threads)  # explicit: the machine is shared with a study
    rows = []
    for model_name in models:
        names = [f"{model_name}-{mode}" for mode in modes if (SWEEPS / f"{model_name}-{mode}").is_dir()]
        if not names:
            continue
        model, tokenizer = load_model(model_name)  # once per model; predict works on a copy
        for name in names:
            rows += predict_sweep(name, model, tokenizer)
        del model
    return rows


def margin_model(row: dict):
    """The chosen variant's margin model at κ = 1, rebuilt from the stored prediction (None for the
    simulated variant, whose model needs the logits)."""
    from phantomlens.predict import MarginModel

    if row["variant"] == "simulated":
        return None
    quadratic = (row["two_point_quadratic"] or 0.0) if row["variant"] == "two-point" else 0.0
    linear = row["margin_velocity"] * row["schedule_sum"]
    if row["variant"] == "replay" and row.get("eta_c_replay"):  # predict's quadratic through its root
        root = row["eta_c_replay"]
        quadratic = -(row["margin_initial"] + linear * root) / (root * root)
    return MarginModel(row["variant"], row["margin_initial"], linear, quadratic)


def rows_from_sweeps(models: list[str], modes: list[str]) -> list[dict]:
    """What ``predict_critical_lr`` with its defaults says for each stored sweep context, from the
    sweep's own κ = 1 prediction (the same call) and the shipped calibration: no model is loaded."""
    from phantomlens.kappa import shipped_calibration
    from phantomlens.results import DEFAULT_VARIANT, FALLBACK_VARIANTS, load_prediction
    from phantomlens.settings import StopRule

    kappa = shipped_calibration()["kappa"]
    rows = []
    for model in models:
        for mode in modes:
            name = f"{model}-{mode}"
            for path in sorted((SWEEPS / name / "predictions" / model / mode).glob("*.json")):
                p = load_prediction(path)
                etas = {"replay": p.eta_c_replay, "two-point": p.eta_c_two_point, "first-order": p.eta_c_first_order}
                variant = next(v for v in (DEFAULT_VARIANT, *FALLBACK_VARIANTS) if etas.get(v))
                entry = kappa[f"{mode}/adamw/{variant}"]
                row = {"sweep": name, "model": model, "mode": mode, "context": path.stem, "variant": variant}
                row |= {
                    "eta_c": etas[variant] / entry["value"],
                    "kappa": entry["value"],
                    "kappa_log_std": entry["log_std"],
                    "kappa_source": f"shipped [{mode}/adamw/{variant}]",
                    "margin_safe": StopRule().margin_safe,
                    "variant_note": None if variant == DEFAULT_VARIANT else f"{DEFAULT_VARIANT} has no root",
                    "passes": sum(p.passes.values()),
                    "seconds": None,
                }
                row |= {k: getattr(p, k) for k in ("margin_initial", "margin_velocity", "schedule_sum")}
                row |= {"two_point_quadratic": p.two_point_quadratic, "eta_c_replay": p.eta_c_replay}
                if variant == "replay" and p.margin_safe == row["margin_safe"]:
                    row["replay_reach"] = _replay_reach(p)
                row["eta_recommended"] = recommended(row, entry["value"], entry["log_std"])
                rows.append(row)
    return rows


def _replay_reach(p) -> float | None:
    """Where a replay prediction's replays reach margin_safe at κ = 1 (its recommendation undone)."""
    if p.variant != "replay" or p.eta_recommended is None:
        return None
    return p.eta_recommended * p.kappa / math.exp(p.kappa_log_std or 0.0)


def recommended(row: dict, kappa: float, log_std: float | None) -> float | None:
    """The recommended LR of ``row``'s margin model with κ and σ (predict's own rule). A replay
    prediction's reach comes from its replays (stored at κ = 1 by the sweep), not from a curve."""
    reach = row.get("replay_reach")
    if reach is None:
        model = margin_model(row)
        reach = None if model is None else model.reaching(row["margin_safe"])
    return None if reach is None else reach / kappa * math.exp(log_std or 0.0)


def blind_kappas(calibration: dict) -> dict[tuple[str, str], tuple[float, float | None]]:
    """(key, held-out model) → (κ, σ) over the other models' contexts: the blind test's κ, and the
    std of log κ_i of the same contexts (what a calibration without that model would ship)."""
    rows = calibration.get("contexts") or []
    kappas = {}
    for key in {r["key"] for r in rows}:
        models = {r["model"] for r in rows if r["key"] == key}
        for held_out in models:
            logs = [math.log(r["kappa_i"]) for r in rows if r["key"] == key and r["model"] != held_out]
            if logs:
                sigma = statistics.stdev(logs) if len(logs) > 1 else None
                kappas[(key, held_out)] = (math.exp(statistics.fmean(logs)), sigma)
    return kappas


def evaluate(row: dict, runs: list[tuple[float, float]], eta_c: float | None, lr: float | None) -> dict:
    """What the sweep's runs say about a run at the recommended LR ``lr``."""
    lrs = [x for x, m in runs if math.isfinite(m)]
    margin = None if lr is None else margin_at(runs, lr)
    where = None
    if lr is not None and margin is None and lrs:
        where = "above every run" if lr > max(lrs) else "below every run" if lr < min(lrs) else "between runs"
    highest = max(((x, m) for x, m in runs if math.isfinite(m)), default=(None, None))
    return {
        "eta_recommended": lr,
        "ratio_to_eta_c": None if lr is None or not eta_c else lr / eta_c,
        "covered": margin is not None,
        "margin": margin,
        "reaches_safe": None if margin is None else margin >= row["margin_safe"],
        "flipped": None if margin is None else margin >= 0,
        "not_covered": where,
        # m_T rises with η below divergence (every stored sweep shows it), so an LR above a run
        # that already reached margin_safe reaches it too: a bound, kept apart from the counts
        "above_a_run_at_safe": where == "above every run" and highest[1] >= row["margin_safe"],
    }


def check_rebuilt(row: dict) -> None:
    """The blind recommendation reuses predict's rule on a rebuilt margin model: it must give back
    predict's own recommendation with the shipped κ and σ."""
    if margin_model(row) is None:
        return
    rebuilt, stored = recommended(row, row["kappa"], row["kappa_log_std"]), row["eta_recommended"]
    if (rebuilt is None) != (stored is None) or (rebuilt and not math.isclose(rebuilt, stored, rel_tol=1e-6)):
        raise RuntimeError(f"{row['sweep']} {row['context']}: rebuilt {rebuilt}, predict said {stored}")


def evaluate_all(rows: list[dict], calibration: dict) -> list[dict]:
    """Each context's in-sample and blind (leave-one-model-out) recommendation against its sweep."""
    import pandas as pd

    blind = blind_kappas(calibration)
    runs = {name: sweep_runs(SWEEPS / name) for name in {r["sweep"] for r in rows}}
    tables = {name: pd.read_parquet(SWEEPS / name / "critical_lr.parquet") for name in runs}
    out = []
    for row in rows:
        table = tables[row["sweep"]]
        found = table.loc[table["context"] == row["context"], "eta_c"]
        eta_c = None if found.empty or pd.isna(found.iloc[0]) else float(found.iloc[0])
        context_runs = runs[row["sweep"]].get(row["context"], [])
        check_rebuilt(row)
        key = f"{row['mode']}/adamw/{row['variant']}"
        kappa, sigma = blind.get((key, row["model"]), (None, None))
        lomo = None if kappa is None else recommended(row, kappa, sigma)
        out.append(
            row
            | {"eta_c_measured": eta_c, "runs": len(context_runs), "monotone": monotone(context_runs)}
            | {"in_sample": evaluate(row, context_runs, eta_c, row["eta_recommended"])}
            | {"blind": evaluate(row, context_runs, eta_c, lomo) | {"kappa": kappa, "kappa_log_std": sigma}}
            # the rule before the e^σ safety factor: κ's central value alone
            | {"central": evaluate(row, context_runs, eta_c, recommended(row, row["kappa"], None))}
        )
    return out


def summary(contexts: list[dict], which: str) -> dict:
    """Counts and medians over contexts, for ``which`` recommendation (in_sample or blind)."""
    results = [c[which] for c in contexts]
    covered = [r for r in results if r["covered"]]
    ratios = [r["ratio_to_eta_c"] for r in results if r["ratio_to_eta_c"] is not None]
    return {
        "contexts": len(results),
        "recommended": sum(r["eta_recommended"] is not None for r in results),
        "covered": len(covered),
        "reaches_safe": sum(r["reaches_safe"] for r in covered),
        "flipped": sum(r["flipped"] for r in covered),
        "median_margin": statistics.median(r["margin"] for r in covered) if covered else None,
        "median_ratio_to_eta_c": statistics.median(ratios) if ratios else None,
        "above_every_run": sum(r["not_covered"] == "above every run" for r in results),
        "below_every_run": sum(r["not_covered"] == "below every run" for r in results),
        "above_a_run_at_safe": sum(r["above_a_run_at_safe"] for r in results),
    }


def summarize(contexts: list[dict], command: str, seconds: float | None) -> dict:
    groups: dict[str, list[dict]] = {}
    for c in contexts:
        groups.setdefault(f"{c['model']}/{c['mode']}", []).append(c)
    blind = {k: summary(g, "blind") for k, g in groups.items() if all(c["blind"]["kappa"] for c in g)}
    return {
        "command": command,
        "about": (
            "Recommended LR of `phantomlens predict` (default settings, shipped calibration) per stored "
            "sweep context, and the final margin the sweep's runs reached there (linear in ln η between "
            "the two runs that straddle it; not covered otherwise). in_sample: κ and σ were fitted on "
            "these same contexts. blind: κ and σ from the other models' contexts only. central: "
            "in-sample κ without the e^σ safety factor (the rule before it)."
        ),
        "margin_safe": contexts[0]["margin_safe"] if contexts else None,
        "prediction_seconds_cpu": seconds,
        "in_sample": {k: summary(g, "in_sample") for k, g in groups.items()},
        "blind": blind,
        "central": {k: summary(g, "central") for k, g in groups.items()},
        "per_context": contexts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--modes", nargs="+", default=MODES)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine is shared)")
    parser.add_argument("--from-json", action="store_true", help="re-evaluate the stored predictions")
    parser.add_argument(
        "--from-sweeps",
        action="store_true",
        help="take each prediction from the sweep's stored κ = 1 one and the shipped κ (no model)",
    )
    args = parser.parse_args()
    from phantomlens.atomic import write_json_atomic

    started = time.perf_counter()
    if args.from_json:
        stored = json.loads(OUT.read_text())
        fields = ("sweep", "model", "mode", "context", *PREDICTION_FIELDS, "passes", "seconds", "replay_reach")
        rows, seconds = (
            [{k: c.get(k) for k in fields} for c in stored["per_context"]],
            stored["prediction_seconds_cpu"],
        )
    elif args.from_sweeps:
        rows, seconds = rows_from_sweeps(args.models, args.modes), None
    else:
        rows = predict_all(args.models, args.modes, args.threads)
        seconds = round(time.perf_counter() - started, 1)
    calibration = json.loads((RESULTS / "calibration.json").read_text())
    command = "python -m benchmarks.recommended_lr " + " ".join(sys.argv[1:])
    result = summarize(evaluate_all(rows, calibration), command.strip(), seconds)
    write_json_atomic(OUT, result)
    print(json.dumps({k: result[k] for k in ("in_sample", "blind", "central")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
