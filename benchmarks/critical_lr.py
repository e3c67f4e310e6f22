"""Critical learning rate: prediction vs sweep vs the LR range test, and the blind test.

    python -m benchmarks.critical_lr                       # everything below, resumable
    python -m benchmarks.critical_lr --models smollm2-135m --modes lora --contexts 12
    python -m benchmarks.critical_lr --doc-only            # rewrite docs/critical-lr.md from the JSON

1. Sweeps (``phantomlens sweep``) per model × mode on the first N built-in contexts, stored under
   benchmarks/results/sweeps/<model>-<mode>/ (resumable: rerun to continue).
2. Calibration and the blind test (``phantomlens calibrate``): κ fitted on all models but one,
   the held-out model predicted; both directions, per mode.
3. Cost: passes for a prediction (1 forward + 2 backward) against the passes the sweep spent.
4. Baseline: a learning-rate range test (exponential LR ramp over 100 steps, suggestion at the
   steepest smoothed loss descent, torch-lr-finder's conventions) on the same contexts.
Writes benchmarks/results/critical_lr.json, benchmarks/results/calibration.json (sweeps named
relative to the repository) and docs/critical-lr.md. The calibration the package ships is made from
the same sweeps by ``python -m tools.ship_calibration``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from phantomlens.results import load_sweep_records
from tools.fmt import DASH, MACHINES, SHARED_CPU, add_seconds, device_times, fmt, missing, pct

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SWEEPS = RESULTS / "sweeps"
DOC = ROOT / "docs" / "critical-lr.md"
N_CONTEXTS = 12  # the first N built-in contexts, per model and mode
OPTIONAL_MODELS = ["qwen2.5-0.5b"]


def swept(model: str, modes) -> bool:
    return any((SWEEPS / f"{model}-{mode}" / "critical_lr.parquet").is_file() for mode in modes)


def range_test(
    base,
    tokenizer,
    context: str,
    mode: str,
    start: float = 1e-8,
    end: float = 1.0,
    steps: int = 100,
    smooth: float = 0.05,
    diverge: float = 5.0,
    skip_start: int = 10,
    skip_end: int = 5,
) -> dict:
    """An LR range test on a copy of the model: the LR at the steepest smoothed loss descent."""
    import torch

    from phantomlens.contexts import get_context, resolve
    from phantomlens.session import make_optimizer, prepare_model
    from phantomlens.settings import RunConfig
    from phantomlens.train import forward_loss, update

    ctx = get_context(context)
    config = RunConfig(mode=mode, lr=start)
    torch.manual_seed(0)
    model = prepare_model(copy.deepcopy(base), config)
    model.eval()
    spec = resolve(tokenizer, ctx.text, ctx.target, ctx.competitor, model=model, warn=False)
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    target = torch.tensor([spec.target_id])
    lrs, losses = [], []
    best = math.inf
    for i in range(steps):
        lr = start * (end / start) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        _, loss = forward_loss(model, spec.input_ids, target)
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        smoothed = value if not losses else smooth * value + (1 - smooth) * losses[-1]
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if smoothed > diverge * best:
            break
        update(loss, optimizer)
    window = losses[skip_start : len(losses) - skip_end]
    if len(window) < 2:
        return {"suggestion": None, "lrs": lrs, "losses": losses, "steps_run": len(lrs)}
    index = int(np.argmin(np.gradient(np.array(window)))) + skip_start
    return {"suggestion": lrs[index], "lrs": lrs, "losses": losses, "steps_run": len(lrs)}


def run_sweeps(models, modes, contexts, refresh_predictions: bool = False) -> dict[str, Path]:
    from phantomlens.settings import SweepConfig
    from phantomlens.sweep import Sweep

    dirs = {}
    for model in models:
        for mode in modes:
            out = SWEEPS / f"{model}-{mode}"
            config = SweepConfig.from_dict(
                {"model": model, "mode": mode, "contexts": contexts, "eta_max": False}
                | {"refresh_predictions": refresh_predictions}
            )
            print(f"sweep {model} {mode}: {len(contexts)} contexts -> {out.relative_to(ROOT)}", flush=True)
            Sweep(config, out).run()
            dirs[f"{model}/{mode}"] = out
    return dirs


def run_range_tests(models, modes, contexts) -> list[dict]:
    from phantomlens.models import load_model

    path = RESULTS / "range_tests.json"
    done = json.loads(path.read_text()) if path.is_file() else []
    have = {(r["model"], r["mode"], r["context"]) for r in done}
    from phantomlens.atomic import write_json_atomic

    for model in models:
        todo = [(mode, c) for mode in modes for c in contexts if (model, mode, c) not in have]
        if not todo:
            continue
        base, tokenizer = load_model(model)
        for mode, context in todo:
            print(f"range test {model} {mode} {context}", flush=True)
            started = time.perf_counter()
            result = range_test(base, tokenizer, context, mode)
            done.append(
                {
                    "model": model,
                    "mode": mode,
                    "context": context,
                    "suggestion": result["suggestion"],
                    "steps_run": result["steps_run"],
                    "wall_time_s": round(time.perf_counter() - started, 1),
                }
            )
            write_json_atomic(path, done)  # resumable, one test at a time
    return done


def prediction_passes(variant: str) -> int:
    """Forward plus backward passes one prediction of ``variant`` costs (``predict.PASSES``)."""
    from phantomlens.predict import PASSES

    return sum(PASSES[variant].values())


def _calibration(dirs: list[Path]) -> dict:
    from phantomlens.atomic import write_json_atomic
    from phantomlens.calibrate import calibrate
    from phantomlens.errors import PhantomLensError

    try:
        calibration = calibrate(dirs, relative_to=ROOT)
    except PhantomLensError:  # nothing measured yet
        return {"kappa": {}, "blind": []}
    write_json_atomic(RESULTS / "calibration.json", calibration)
    return calibration


def _range_tests():
    import pandas as pd

    path = RESULTS / "range_tests.json"
    return pd.DataFrame(json.loads(path.read_text())) if path.is_file() else pd.DataFrame()


def _start_variant(row, tried: set[float]) -> str | None:
    """Which κ = 1 prediction a root search started at: the variant one of its runs sits on (to
    1e-4: a prediction redone later, e.g. to add the replay, can move in the last digits)."""
    from phantomlens.calibrate import VARIANT_COLUMNS

    for variant in ("replay", "two-point", "simulated", "first-order"):  # the sweep's order of preference
        eta = getattr(row, VARIANT_COLUMNS[variant], None)
        if eta and eta == eta and any(abs(lr / eta - 1) < 1e-4 for lr in tried):
            return variant
    return None


def per_context_rows(tables: dict, ranges) -> list[dict]:
    """One row per (sweep, context): η_c, its bracket, the κ = 1 predictions, the range test."""
    from phantomlens.results import load_sweep_records

    rows = []
    for name, table in tables.items():
        tried: dict[str, set[float]] = {}
        for record in load_sweep_records(SWEEPS / name / "runs"):
            tried.setdefault(record.context, set()).add(record.lr)
        for row in table.itertuples():
            record = {
                "sweep": name,
                "model": row.model,
                "mode": row.mode,
                "context": row.context,
                "eta_c": row.eta_c,
                "bracket_low": row.bracket_low,
                "bracket_high": row.bracket_high,
                "runs_used": row.runs_used,
                "search": getattr(row, "search", None),
                "start_variant": _start_variant(row, tried.get(row.context, set())),
                "runs_eta_c": _count(getattr(row, "runs_eta_c", None)),
                "steps_run": row.steps_run,
                "complete": bool(row.complete),
                "sweep_passes": 2 * int(row.steps_run) + int(row.runs_used),  # 2T + 1 per run
                "prediction_passes": prediction_passes("first-order"),
                "eta_c_predicted_kappa1": row.eta_c_predicted_kappa1,
                "eta_c_predicted_sim_kappa1": getattr(row, "eta_c_predicted_sim_kappa1", None),
                "eta_c_predicted_two_point_kappa1": getattr(row, "eta_c_predicted_two_point_kappa1", None),
                "eta_c_predicted_replay_kappa1": getattr(row, "eta_c_predicted_replay_kappa1", None),
                "note": row.note,
            }
            match = (
                ranges[
                    (ranges["model"] == row.model)
                    & (ranges["mode"] == row.mode)
                    & (ranges["context"] == row.context)
                ]
                if len(ranges)
                else []
            )
            if len(match):
                suggestion = match["suggestion"].iloc[0]
                record["range_test_suggestion"] = suggestion
                record["range_test_error"] = (
                    (suggestion / row.eta_c - 1) if suggestion and row.eta_c else None
                )
            rows.append(record)
    return rows


def cost_by_sweep(frame) -> dict:
    passes = prediction_passes("first-order")
    cost = {}
    for name, group in frame.groupby("sweep"):
        measured = group[group["eta_c"].notna()]
        cost[name] = {
            "contexts": len(group),
            "median_sweep_passes": float(measured["sweep_passes"].median()) if len(measured) else None,
            "prediction_passes": passes,
            "median_ratio": float((measured["sweep_passes"] / passes).median()) if len(measured) else None,
        }
    return cost


def lora_sufficiency(frame, models) -> dict:
    """Per model: did LoRA flip enough contexts below divergence (``classify.LORA_SUFFICIENT_FRACTION``)?"""
    from phantomlens.classify import LORA_SUFFICIENT_FRACTION

    lora = {}
    for model in models:
        group = frame[(frame["model"] == model) & (frame["mode"] == "lora") & frame["complete"]]
        if len(group):  # only finished searches can say whether LoRA flipped the context
            flips = int(group["eta_c"].notna().sum())
            lora[model] = {
                "contexts": len(group),
                "flipped_below_divergence": flips,
                "sufficient": flips / len(group) >= LORA_SUFFICIENT_FRACTION,
            }
    return lora


def range_errors(frame) -> dict:
    errors_by_sweep = {}
    for name, group in frame.groupby("sweep"):
        if "range_test_error" in group and group["range_test_error"].notna().any():
            errors = group["range_test_error"].dropna().abs()
            errors_by_sweep[name] = {
                "n": len(errors),
                "median_abs_error": float(errors.median()),
                "max_abs_error": float(errors.max()),
            }
    return errors_by_sweep


def geometry_classes(models, lora: dict) -> dict:
    """Each model's geometry class (cached; computed from the model once), checked against ``lora``."""
    from phantomlens.atomic import write_json_atomic

    classes = {}
    for model in models:
        cached = RESULTS / f"classify-{model}.json"
        if not cached.is_file():
            from phantomlens.classify import classify_geometry
            from phantomlens.models import load_model

            write_json_atomic(cached, classify_geometry(load_model(model)[0], model).to_dict())
        classes[model] = json.loads(cached.read_text())
        if model in lora:
            lora[model]["predicted_sufficient"] = classes[model]["lora_sufficient_predicted"]
            lora[model]["prediction_right"] = lora[model]["predicted_sufficient"] == lora[model]["sufficient"]
    return classes


def sweep_seconds(dirs: list[Path]) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for directory in dirs:
        for record in load_sweep_records(directory / "runs"):
            add_seconds(seconds, record.device, record.wall_time_s)
    return seconds


def summarize(models, modes, contexts, elapsed: float) -> dict:
    import pandas as pd

    from phantomlens.atomic import write_json_atomic

    # The optional third model is summarised wherever its sweeps are stored (it is never swept here:
    # it needs `make qwen`, and its runs are long; see benchmarks/results/sweeps/README.md).
    models = list(dict.fromkeys([*models, *(m for m in OPTIONAL_MODELS if swept(m, modes))]))
    dirs = [SWEEPS / f"{m}-{mode}" for m in models for mode in modes if (SWEEPS / f"{m}-{mode}").is_dir()]
    tables = {d.name: pd.read_parquet(d / "critical_lr.parquet") for d in dirs}
    calibration = _calibration(dirs)
    ranges = _range_tests()
    per_run = per_context_rows(tables, ranges)
    frame = pd.DataFrame(per_run)
    lora = lora_sufficiency(frame, models)
    classes = geometry_classes(models, lora)
    range_seconds = float(ranges["wall_time_s"].sum()) if len(ranges) else 0.0
    result = {
        "command": "python -m benchmarks.critical_lr " + " ".join(sys.argv[1:]),
        "compute_seconds": {
            "sweep_runs": sweep_seconds(dirs),
            "range_tests": {"cpu": round(range_seconds, 1)},
        },
        "classes": classes,
        "models": models,
        "modes": modes,
        "contexts": contexts,
        "elapsed_s_this_invocation": round(elapsed, 1),
        "kappa": calibration["kappa"],
        "blind": calibration["blind"],
        "cost": cost_by_sweep(frame),
        "lora_sufficiency": lora,
        "range_test": range_errors(frame),
        "root_search": _root_search(),
        "prediction_budget": _prediction_budget(),
        "lora_gap": _lora_gap(),
        "kappa_domain": _kappa_domain(),
        "unseen": _unseen(calibration["kappa"]),
        "per_context": per_run,
    }
    write_json_atomic(RESULTS / "critical_lr.json", result)
    write_doc(result)
    return result


#: The blind test's goal: a held-out model's η_c within this median error.
BLIND_GOAL = 0.02
#: A range-test suggestion this far from η_c (median relative error, every sweep) "lands far" from it.
FAR_FROM_ETA_C = 0.5


def summary_lines(result: dict) -> list[str]:
    """Plain sentences computed from the results, so the doc's verdicts cannot drift from them."""
    lines = []
    for key, k in sorted(result["kappa"].items(), key=lambda kv: kv[1]["log_std"]):
        lines.append(
            f"- κ for {key}: {k['value']:.3g} over {k['n']} contexts of {', '.join(k['models'])}; "
            f"spread CV {pct(k['cv'])}, std of log κ {k['log_std']:.2f} (the smaller, the more universal)."
        )
    for b in result["blind"]:
        goal = "meets" if b["median_abs_error"] <= BLIND_GOAL else "misses"
        lines.append(
            f"- Blind test {b['key']}, held-out {b['model']}: median |error| "
            f"{pct(b['median_abs_error'])} ({goal} the {BLIND_GOAL:.0%} goal)."
        )
    if not result["blind"]:
        lines.append("- Blind test: **not yet measured** (needs sweeps of a second model in the same mode).")
    first, two = prediction_passes("first-order"), prediction_passes("two-point")
    for name, c in result["cost"].items():
        if c["median_ratio"]:
            lines.append(
                f"- Cost, {name}: a sweep took a median {c['median_sweep_passes']:.0f} passes, a "
                f"first-order prediction {first} ({c['median_ratio']:.0f}× fewer), a two-point one {two} "
                f"({c['median_sweep_passes'] / two:.0f}× fewer)."
            )
    for name, r in result["range_test"].items():
        lines.append(
            f"- LR range test, {name}: its suggestion is a median {pct(r['median_abs_error'])} away from η_c."
        )
    return lines + class_lines(result)


def class_lines(result: dict) -> list[str]:
    lines = []
    for model, c in result["classes"].items():
        lora = result["lora_sufficiency"].get(model)
        verdict = (
            "not yet checked (no finished LoRA sweep)"
            if not lora
            else "right"
            if lora["prediction_right"]
            else "**wrong**"
        )
        lines.append(
            f"- {model}: class {c['geometry_class']} (χ = {c['crowding']:.0f}); LoRA predicted "
            f"{'sufficient' if c['lora_sufficient_predicted'] else 'not sufficient'}: {verdict}."
        )
    return lines


def passes_words(variant: str) -> str:
    from phantomlens.predict import PASSES

    return f"{PASSES[variant]['forward']} forward + {PASSES[variant]['backward']} backward"


def replay_passes_words() -> str:
    from phantomlens.replay import MEASURED_REPLAYS, SECANT_STEPS
    from phantomlens.results import DEFAULT_REFRESHES

    k = DEFAULT_REFRESHES
    forward = 3 + (k - 1) + 1 + SECANT_STEPS
    backward = 4 + (k - 1)
    return (
        f"{forward} forward + {backward} backward at K = {k} (the two-point's, then K − 1 gradients, "
        f"1 + {SECANT_STEPS} replayed final margins), and T optimiser steps per replay; K forward + "
        f"K − 1 backward more per further measured replay (at most {MEASURED_REPLAYS} in all), a few "
        "forwards more for the recommended LR"
    )


def intro_lines(result: dict) -> list[str]:
    from phantomlens.settings import SweepConfig

    tolerance = SweepConfig().tolerance
    return [
        "# Critical learning rate",
        "",
        "*Generated by `python -m benchmarks.critical_lr` from `benchmarks/results/critical_lr.json`;"
        " every number below is in that file. Sweeps are stored under `benchmarks/results/sweeps/`.*",
        "",
        "η_c is the smallest peak LR at which a run ends in `success` (flip held at the end of the",
        f"budget), measured to {tolerance:.0%} by `phantomlens sweep`: the stored sweeps below bracket and "
        "bisect in log-LR (`--search bisect`); a sweep now root-finds each run's final margin instead "
        "(`--search root`, the default; see *Root search* below).",
        "Four predictions (`phantomlens predict --variant ...`, all computed on every call), each "
        "divided by its own fitted κ:",
        "",
        "| variant | passes | what it assumes |",
        "|---|---|---|",
        f"| first-order | {passes_words('first-order')} | every step moves the margin by η·s_t·A, "
        "A = Σ_θ (∂m/∂θ)·sign(−∂L/∂θ) measured at step 0; η̂_c = −m_0 / (A·Σ_t s_t) |",
        f"| simulated | {passes_words('simulated')} | the logits move along the measured first-update direction b; "
        "Adam's step m̂/√v̂ shrinks as the loss gradient shrinks |",
        f"| two-point | {passes_words('two-point')} | the margin velocity changes linearly with the distance travelled; "
        "A is re-measured half-way (under LoRA the adapters' A matrices only start moving once B ≠ 0), "
        "and m_0 + η·A_0·Σs_t + η²·G·Σ s_t P_t = 0 is solved for η |",
        f"| replay | {replay_passes_words()} | nothing about the path: the run's own optimiser takes its T "
        "steps on a copy with the loss gradient measured at K of them (steps 0 and 1, then evenly in "
        "distance travelled τ_t = η·Σ_{k<t} s_k) and interpolated in τ between; from the two-point root, "
        "secant steps in ln η replay from the recorded gradients (one forward each); a root more than "
        "1.5× from where they were measured is measured again there (up to three times). K = T is the "
        "run itself |",
        "",
        "```",
        "phantomlens predict --context shame --mode lora                # η̂_c, its interval, the LR to use",
        "phantomlens predict --context shame --mode lora --plot lr.png  # predicted final margin vs LR",
        "phantomlens predict --context shame --mode lora --steps 200 --schedule linear  # outside κ's domain: κ = 1, said so",
        "phantomlens sweep --contexts shame chilly --mode lora --out sweeps/lora",
        "phantomlens calibrate sweeps/lora --out calibration.json       # κ, its spread, its domain",
        "phantomlens predict --context shame --mode lora --calibration calibration.json",
        "```",
        "",
        "A sweep directory holds one search: rerunning the command resumes it, and adding runs made "
        "with other run settings (model, mode, steps, schedule, optimiser, seed) is refused. "
        "`phantomlens sweep --grid η₁ η₂ …` runs a fixed LR grid on every context instead of searching "
        "(a phase diagram, `DIR/grid.parquet`); `--device` and `--workers` choose where and how many "
        "runs at once (with CUDA, several workers share the GPU).",
        "",
        f"Benchmark settings: models {', '.join(result['models'])}; modes {', '.join(result['modes'])}; "
        f"{len(result['contexts'])} contexts ({', '.join(result['contexts'])}); T = 50, cosine, AdamW, seed 0."
        + (
            " qwen2.5-0.5b (optional, `make qwen`): root search, the same contexts with ocean (its "
            "competitor already ranks below the target on this model) replaced by assist; LoRA ran on "
            "this CPU, full fine-tuning (7–9 s a step here) on one H100 GPU "
            "(`benchmarks/results/sweeps/README.md`)."
            if "qwen2.5-0.5b" in result["models"]
            else ""
        ),
        "",
    ]


def _domain_words() -> str:
    """The shipped κ's domains for the default variant, in the words `predict` prints them."""
    from phantomlens.kappa import domain_words, shipped_calibration
    from phantomlens.predict import DEFAULT_VARIANT

    table = shipped_calibration()["kappa"]
    return domain_words(v.get("domain") for k, v in table.items() if k.endswith("/" + DEFAULT_VARIANT))


def use_lines(result: dict) -> list[str]:
    """Which prediction `phantomlens predict` gives by default, and the LR it recommends."""
    from phantomlens.predict import DEFAULT_VARIANT
    from phantomlens.settings import StopRule
    from tools.ship_calibration import best_variants

    best = best_variants(result["blind"])
    if not best:
        return []
    agree = all(b["variant"] == DEFAULT_VARIANT for b in best.values())
    spreads = [
        f"{key}: σ = {k['log_std']:.2f}, {pct(k.get('interval_coverage'), 0)} of its contexts inside"
        for key, k in result["kappa"].items()
        if key.endswith("/" + DEFAULT_VARIANT)
    ]
    return [
        "## Which prediction to use",
        "",
        "`phantomlens predict` (and `predict_critical_lr`) uses by default the variant with the lowest "
        "median blind-test error on a held-out model (mean over the held-out models; below), per mode: "
        + "; ".join(
            f"{key}: {b['variant']} ("
            + ", ".join(f"{v} {pct(e)}" for v, e in b["mean_of_median_abs_errors"].items())
            + ")"
            for key, b in best.items()
        )
        + f". The library's default is `{DEFAULT_VARIANT}`"
        + (", the best in every mode." if agree else ", which these results **no longer rank first**.")
        + " `--variant` picks any of the four (`--refreshes K` sets the replay's cost; see *Error against passes*); a fact of several tokens is predicted first-order.",
        "",
        "It divides by the κ shipped with the package (`phantomlens/data/calibration.json`, made by "
        "`python -m tools.ship_calibration` from the sweeps below), but only for a run inside the domain "
        f"that κ was fitted on or shown to hold in: {_domain_words()} (the LoRA domain is widened where "
        "*Is κ dimensionless?* below measured κ moving less than its own spread across T and schedule, "
        "on SmolLM2's first 4 contexts; linear at T = 20 lies inside the range but was not itself run). "
        "Any other mode, optimiser, schedule, T or "
        "warm-up gets κ = 1, and the output says \"outside the calibration's domain (fitted on …): κ = 1, "
        "uncalibrated\" (κ absorbs what a variant's model misses over the run, which depends on the "
        "schedule and T). A calibration of your own "
        "(`--calibration`) records its domain the same way; `--kappa` gives κ directly.",
        "",
        "The headline comes with an interval η̂_c·exp(±σ), σ the standard deviation of log κ over the "
        "calibration's contexts (" + "; ".join(spreads) + "). η_c itself is a knife edge: a run at η_c "
        "ends barely flipped, target and competitor almost level. So the output also names a "
        "*recommended LR*, the "
        "smallest at which the chosen variant's predicted final margin m_T(η) reaches "
        f"`margin_safe` = {StopRule().margin_safe:g} (p_target ≥ e·p_competitor; `--margin-safe`) even "
        "with κ at the low end of its spread (κ·e^−σ, so the recommendation is e^σ above where the "
        "central κ's margin curve crosses margin_safe; uncalibrated, σ = 0), and "
        "`--plot FILE.png` draws m_T against LR with η̂_c, its interval and the recommendation marked. "
        "Schedules: `cosine`, `linear` (Hugging Face's default: warm-up, then linear decay to 0) and "
        "`constant`; a trainer's own schedule can be given as per-step factors "
        "(`predict_critical_lr(..., factors=[...])`).",
        "",
        *recommended_lines(),
    ]


def _recommended_row(name: str, s: dict, b: dict | None) -> str:
    blind = (
        f"{b['covered']} | {b['reaches_safe']} | {b['flipped']} | {fmt(b['median_ratio_to_eta_c'], '.2f')}"
        if b
        else "– | – | – | –"
    )
    return (
        f"| {name} | {s['contexts']} | {s['covered']} | {s['reaches_safe']} | {s['flipped']} | "
        f"{fmt(s['median_margin'], '.2f')} | {fmt(s['median_ratio_to_eta_c'], '.2f')} | "
        f"{s['above_every_run']} ({s['above_a_run_at_safe']}) | {blind} |"
    )


def _by_mode(groups: dict, safe: str) -> str:
    """'LoRA 14 of 15, full 6 of 9' reach margin_safe (of the covered contexts), with the flips."""
    parts = []
    for mode, label in (("lora", "LoRA"), ("full", "full")):
        chosen = [g for name, g in groups.items() if name.endswith("/" + mode)]
        covered, reach, flipped = (sum(g[k] for g in chosen) for k in ("covered", "reaches_safe", "flipped"))
        parts.append(f"{label} {reach} of {covered} reached m_T ≥ {safe} ({flipped} flipped)")
    return "; ".join(parts)


def recommended_lines() -> list[str]:
    """How often the recommended LR reached margin_safe on the stored sweeps
    (``benchmarks/results/recommended_lr.json``; nothing when it has not been measured)."""
    path = RESULTS / "recommended_lr.json"
    if not path.is_file():
        return []
    found = json.loads(path.read_text())
    inside, blind, central = found["in_sample"], found["blind"], found.get("central") or {}
    safe = f"{found['margin_safe']:g}"
    covered = sum(s["covered"] for s in inside.values())
    contexts = sum(s["contexts"] for s in inside.values())
    rising = sum(bool(c.get("monotone")) for c in found["per_context"])
    medians = [s["median_ratio_to_eta_c"] for s in inside.values() if s["median_ratio_to_eta_c"]]
    ratios = f"{min(medians):.1f}–{max(medians):.1f}" if medians else DASH
    short = [
        f"{c['model']}/{c['mode']} {c['context']} (m_T = {c['in_sample']['margin']:.2f} at "
        f"{c['in_sample']['ratio_to_eta_c']:.2f}·η_c)"
        for c in found["per_context"]
        if c["in_sample"]["covered"] and not c["in_sample"]["reaches_safe"]
    ]
    from phantomlens.results import DEFAULT_VARIANT

    used = sorted({c["variant"] for c in found["per_context"]})
    which = (
        "today's default prediction"
        if used == [DEFAULT_VARIANT]
        else f"the {' and '.join(used)} prediction (the default when this was measured; the "
        f"{DEFAULT_VARIANT} default's own recommendation, read from replays, is not yet measured "
        "this way)"
    )
    return [
        "**Does a run at the recommended LR reach margin_safe?** Measured on the stored sweeps "
        f"(`python -m benchmarks.recommended_lr`): {which} for every context, and the "
        "final margin the sweep's own runs reached at the recommended LR, interpolated linearly in ln η "
        "between the two runs that straddle it. A bisection sweep's runs crowd around η_c, so a "
        "recommendation well above it often lies beyond the highest run: *not covered*, and left out of "
        f"the counts. Covered: {covered} of {contexts} contexts. **In-sample** (κ and σ were fitted on "
        f"these same contexts, so they may flatter the rule): {_by_mode(inside, safe)}."
        + (
            f" Blind (κ and σ from the other models' contexts only): {_by_mode(blind, safe)}."
            if blind
            else ""
        )
        + (
            f" With κ's central value alone (the rule before the e^σ factor): {_by_mode(central, safe)}."
            if central
            else ""
        )
        + f" The price: the recommendation is a median {ratios}× the measured η_c."
        + (f" Short of {safe}: {'; '.join(short)}." if short else ""),
        "",
        f"| model / mode | contexts | covered | m_T ≥ {safe} | flipped | median m_T | median recommended / η_c | "
        f"beyond the highest run (which reached {safe}) | blind: covered | m_T ≥ {safe} | flipped | "
        "median recommended / η_c |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(_recommended_row(name, s, blind.get(name)) for name, s in inside.items()),
        "",
        f"m_T rises with η below divergence (run by run, in {rising} of the {contexts} contexts' sweeps), "
        f"so a recommendation beyond a run that already ended at m_T ≥ {safe} reaches it too; the number "
        "in brackets counts those, a bound rather than a measurement.",
        "",
    ]


def _context_row(r: dict) -> str:
    eta, pred = r.get("eta_c"), r.get("eta_c_predicted_kappa1")
    sim, two = r.get("eta_c_predicted_sim_kappa1"), r.get("eta_c_predicted_two_point_kappa1")
    replay = r.get("eta_c_predicted_replay_kappa1")
    bracket = f"{r['bracket_low']:.4g}–{r['bracket_high']:.4g}" if r.get("bracket_low") else DASH
    shown = (
        f"{fmt(pred, '.4g')} | {{}} | {fmt(sim, '.4g')} | {{}} | {fmt(two, '.4g')} | {{}} | "
        f"{fmt(replay, '.4g')} | {{}}"
    )
    if not eta:
        return (
            f"| {r['sweep']} | {r['context']} | – ({r['note'] or 'not finished'}) | {bracket} | {r['runs_used']} | "
            + shown.format(DASH, DASH, DASH, DASH)
            + " | – | – |"
        )

    def kappa(predicted, none: str = DASH) -> str:
        return none if missing(predicted) else f"{predicted / eta:.3f}"

    suggestion = r.get("range_test_suggestion")
    return (
        f"| {r['sweep']} | {r['context']} | {eta:.4g} | {bracket} | {r['runs_used']} | "
        + shown.format(kappa(pred), kappa(sim), kappa(two, "– (no root)"), kappa(replay))
        + f" | {suggestion if suggestion is None else f'{suggestion:.3g}'} | {pct(r.get('range_test_error'))} |"
    )


def context_lines(result: dict) -> list[str]:
    return [
        "## Summary",
        "",
        *summary_lines(result),
        "",
        "## Measured η_c and the κ = 1 prediction",
        "",
        "| model / mode | context | η_c | bracket | runs | first-order (κ=1) | κ_i | simulated (κ=1) | κ_i | two-point (κ=1) | κ_i | replay (κ=1) | κ_i | range test | range-test error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *map(_context_row, result["per_context"]),
    ]


def kappa_and_blind_lines(result: dict) -> list[str]:
    lines = [
        "",
        "## κ and its spread",
        "",
        "| mode/optimiser | κ (geometric mean) | contexts | CV | std of log κ | models |",
        "|---|---|---|---|---|---|",
    ]
    for key, k in result["kappa"].items():
        lines.append(
            f"| {key} | {k['value']:.4g} | {k['n']} | {pct(k['cv'])} | {k['log_std']:.3f} | {', '.join(k['models'])} |"
        )
    lines += ["", "## Blind test", ""]
    if not result["blind"]:
        swept = ", ".join(sorted({r["sweep"] for r in result["per_context"]}))
        return [
            *lines,
            "**Not yet measured**: the blind test needs sweeps of at least two models in the same "
            f"mode (calibrate on one, predict the other). The sweeps stored so far cover: {swept}.",
        ]
    return [
        *lines,
        "Each model is held out in turn: κ is the geometric mean of κ_i over the other models' contexts, "
        "and the held-out model's contexts are predicted with it. Two limits to read the table with. "
        "η_c is bracketed to 1%, and a root search that starts at the prediction itself (every sweep "
        "made after the replay existed: the third model's full fine-tuning, the unseen contexts) ends "
        "with κ_i at 1.00 or 0.99 whenever the prediction lies inside the bracket, so errors of 1% or "
        "less there are the bracket's resolution, not finer accuracy. And the replay and its K = 6 were "
        "chosen on SmolLM2 and Gemma (the LoRA gap diagnosis and *Error against passes*); the third "
        "model and the contexts never tuned on (below) are the tests that took no part in that choice.",
        "",
        "| mode/optimiser | held-out model | contexts | median abs. error | max abs. error |",
        "|---|---|---|---|---|",
        *(
            f"| {b['key']} | {b['model']} | {b['n']} | {pct(b['median_abs_error'])} | {pct(b['max_abs_error'])} |"
            for b in result["blind"]
        ),
    ]


def cost_and_range_lines(result: dict) -> list[str]:
    lines = [
        "",
        "## Cost",
        "",
        "| sweep | contexts | median passes per sweep | passes per prediction | ratio |",
        "|---|---|---|---|---|",
    ]
    for name, c in result["cost"].items():
        ratio = f"{c['median_ratio']:.0f}×" if c["median_ratio"] else DASH
        passes = f"{c['median_sweep_passes']:.0f}" if c["median_sweep_passes"] else DASH
        lines.append(f"| {name} | {c['contexts']} | {passes} | {c['prediction_passes']} | {ratio} |")
    lines += [
        "",
        "A pass is one forward or one backward pass over the context; a run of T steps costs 2T + 1.",
        "",
        "## Learning-rate range test (the usual baseline)",
        "",
    ]
    ranges = result["range_test"]
    if not ranges:
        return [*lines, "Not yet measured."]
    medians = [r["median_abs_error"] for r in ranges.values()]
    where = (
        "which is why it lands far from η_c."
        if min(medians) >= FAR_FROM_ETA_C
        else f"yet its suggestion lands a median {pct(min(medians))}–{pct(max(medians))} from η_c."
    )
    return [
        *lines,
        "| sweep | contexts | median abs. error of the suggestion vs η_c | max |",
        "|---|---|---|---|",
        *(
            f"| {name} | {r['n']} | {pct(r['median_abs_error'])} | {pct(r['max_abs_error'])} |"
            for name, r in ranges.items()
        ),
        "",
        "An exponential LR ramp over 100 steps (1e-8 → 1), suggestion at the steepest smoothed "
        "loss descent (torch-lr-finder's conventions). It answers a different question (where the "
        f"loss falls fastest), {where}",
    ]


def _prediction_budget() -> list[dict] | None:
    """Blind error against passes per variant (benchmarks/prediction_budget.py), when measured."""
    from benchmarks import prediction_budget

    if not prediction_budget.OUT.is_file():
        return None
    return prediction_budget.blind_table(json.loads(prediction_budget.OUT.read_text())["rows"])


def _lora_gap() -> dict | None:
    from benchmarks import lora_gap

    if not lora_gap.OUT.is_file():
        return None
    stored = json.loads(lora_gap.OUT.read_text())
    keep = (
        "model",
        "mode",
        "context",
        "eta_c",
        "margin_final",
        "two_point_final",
        "gap_final",
        "gap_by_phase",
    )
    return {"summary": stored["summary"], "rows": [{k: r[k] for k in keep} for r in stored["rows"]]}


def _kappa_domain() -> dict | None:
    from tools import kappa_domain

    if not kappa_domain.OUT.is_file():
        return None
    stored = json.loads(kappa_domain.OUT.read_text())
    return {k: stored[k] for k in ("model", "mode", "contexts", "summary")}


UNSEEN = ROOT / "results" / "unseen"


def _unseen(kappa: dict) -> list[dict] | None:
    """Contexts no prediction was ever tuned on (built-in contexts past the first 12), swept under
    results/unseen/<model>-<mode>/: each variant's error with κ from the benchmark sweeps."""
    import pandas as pd

    from phantomlens.calibrate import VARIANT_COLUMNS

    if not UNSEEN.is_dir():
        return None
    rows = []
    for directory in sorted(d for d in UNSEEN.iterdir() if (d / "critical_lr.parquet").is_file()):
        for row in pd.read_parquet(directory / "critical_lr.parquet").itertuples():
            if row.eta_c != row.eta_c:
                continue
            for variant, column in VARIANT_COLUMNS.items():
                entry = kappa.get(f"{row.mode}/adamw/{variant}")
                predicted = getattr(row, column, None)
                if entry and predicted and predicted == predicted:
                    error = predicted / entry["value"] / row.eta_c - 1
                    rows.append({"sweep": directory.name, "context": row.context, "variant": variant,
                                 "eta_c": float(row.eta_c), "relative_error": float(error)})  # fmt: skip
    return rows


def unseen_lines(result: dict) -> list[str]:
    import statistics

    rows = result.get("unseen")
    if not rows:
        return []
    lines = [
        "",
        "## Contexts never tuned on",
        "",
        "Built-in contexts beyond the first 12, which no variant, κ or setting was chosen on, swept "
        "with `phantomlens sweep --contexts … --out results/unseen/<model>-<mode>` and predicted with "
        "κ from the benchmark sweeps above. One of them, SmolLM2's `recall` under LoRA, first came out "
        "+210%: two measured replays contradicted each other (m_T falling as η rose) and the secant "
        "through them walked away. The replay now falls back to the quadratic through m_0 when that "
        "happens (no other stored prediction had such a pair); the guard was written for that failure, "
        "so `recall`'s error below is no longer a blind one.",
        "",
        "| sweep | variant | contexts | median abs. error | max abs. error |",
        "|---|---|---|---|---|",
    ]
    keys = sorted({(r["sweep"], r["variant"]) for r in rows})
    for sweep, variant in keys:
        errors = [abs(r["relative_error"]) for r in rows if (r["sweep"], r["variant"]) == (sweep, variant)]
        lines.append(
            f"| {sweep} | {variant} | {len(errors)} | {pct(statistics.median(errors))} | {pct(max(errors))} |"
        )
    return lines


def kappa_domain_lines(result: dict) -> list[str]:
    found = result.get("kappa_domain")
    if not found or not found["summary"]:
        return []
    names = list(next(iter(found["summary"]))["domains"])
    lines = [
        "",
        "## Is κ dimensionless? κ across T and schedules",
        "",
        f"κ = η̂_c(κ = 1) / η_c on {found['model']} {found['mode']}, AdamW, contexts "
        f"{', '.join(found['contexts'])}, in five domains (`python -m tools.kappa_domain`, "
        "results/kappa-domain/): the geometric mean over the contexts, and in the last column how far "
        "it moves between domains (largest over smallest).",
        "",
        "| variant | " + " | ".join(names) + " | largest / smallest |",
        "|---|" + "---|" * len(names) + "---|",
    ]
    for s in found["summary"]:
        cells = [fmt(s["domains"].get(n, {}).get("kappa"), ".3f") for n in names]
        lines.append(f"| {s['variant']} | " + " | ".join(cells) + f" | {s['max_over_min']:.3f} |")
    return lines


def budget_lines(result: dict) -> list[str]:
    table = result.get("prediction_budget")
    if not table:
        return []
    lines = [
        "",
        "## Error against passes",
        "",
        "Every variant on the same contexts, blind: κ fitted on the other model's contexts only, the "
        "held-out model's predicted (`python -m benchmarks.prediction_budget`, "
        "benchmarks/results/prediction_budget.json). The replay at K gradient measurements; its passes "
        "vary by context (a second measured replay where the first root lands far from the two-point "
        "start), so the median and the most are given. A sweep costs about 1,000 passes. These are "
        "SmolLM2 and Gemma under LoRA only, each predicted with κ from the other alone, so their K = 6 "
        "row differs from the *Blind test* above, where κ also draws on the third model.",
        "",
        "| mode | variant | held-out model | contexts | passes: median (most) | κ (other model) | median abs. error | max abs. error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['mode']} | {r['variant']} | {r['held_out']} | {r['contexts']} | "
            f"{r['median_passes']:g} ({r['max_passes']:g}) | {r['kappa']:.3f} | "
            f"{pct(r['median_abs_error'])} | {pct(r['max_abs_error'])} |"
        )
    return lines


def lora_gap_lines(result: dict) -> list[str]:
    gap = result.get("lora_gap")
    if not gap:
        return []
    by_mode = {s["mode"]: s for s in gap["summary"]}
    lines = [
        "",
        "## Why the closed forms miss under LoRA",
        "",
        "One real run per context at its measured η_c (`python -m benchmarks.lora_gap`, SmolLM2-135M), "
        "against the two-point variant's margin path at the same LR: the gap m_t − m̂_t (logits), split "
        "by where it accumulates: the warm-up (first 10% of updates, where B leaves 0), the middle, and "
        "the schedule's tail (last 30%). A positive gap: the run moved the margin further than the "
        "two-point path, so the two-point root lies above η_c (κ > 1).",
        "",
        "| mode | contexts | run ahead of the path | median final gap | of which warm-up | middle | tail |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, s in by_mode.items():
        lines.append(
            f"| {mode} | {s['contexts']} | {s['positive_gaps']} | {s['median_gap_final']:+.2f} | "
            f"{s['median_warmup']:+.2f} | {s['median_middle']:+.2f} | {s['median_tail']:+.2f} |"
        )
    lora = by_mode.get("lora")
    phases = {p: lora[f"median_{p}"] for p in ("warmup", "middle", "tail")} if lora else {}
    if lora and lora["median_gap_final"] > 0 and max(phases, key=phases.get) == "middle":
        lines += [
            "",
            "Under LoRA the run outruns the two-point path in every context, and the gap builds up in "
            "the middle of the run, not in the warm-up where B leaves 0: the margin accelerates as A "
            "and B grow together (Adam moves A at full speed as soon as B ≠ 0, and B faster as A "
            "moves), while the two-point variant re-measures the velocity along the first update, "
            "in which A does not move at all. Under full fine-tuning the path holds. The replay runs "
            "the optimiser instead of modelling its path, and closes the gap (its κ is 1.00 in both "
            "modes).",
        ]
    return lines


def _root_search() -> dict | None:
    """What docs/critical-lr.md shows of benchmarks/results/root_search.json (None: not run yet)."""
    path = RESULTS / "root_search.json"
    if not path.is_file():
        return None
    found = json.loads(path.read_text())
    by_sweep = {
        name: s["two-point/root"] | {"bisect": s["two-point/bisect"]} for name, s in found["by_sweep"].items()
    }
    stored = [r["stored"]["runs"] for rows in found["contexts"].values() for r in rows]
    return {
        "summary": found["summary"],
        "by_sweep": by_sweep,
        "stored_median_runs": float(np.median(stored)),
        "live": found.get("live"),
        "tolerance": found["tolerance"],
    }


ROOT_SEARCH_STARTS = {
    "two-point": "two-point κ = 1 (the start before the replay)",
    "simulated": "simulated κ = 1 (the start before that)",
    "first-order": "first-order κ = 1",
}


def root_search_lines(result: dict) -> list[str]:
    found = result.get("root_search")
    lines = [
        "",
        "## Root search: η_c in about four runs",
        "",
        "A run's final margin m_T(η) is a continuous function of the peak LR whose zero is η_c, so "
        "`phantomlens sweep` (`--search root`, the default) root-finds it in log-LR instead of "
        "bisecting a pass/fail outcome. It starts at the κ = 1 prediction (replay, else two-point, "
        "else simulated) and fits the gain y = ln((m_T − m_0)/(−m_0)), which has the margin's sign and is "
        "close to linear in ln η when m_T − m_0 grows as a power of η (m_0: the margin before "
        "training): a parabola through the three runs nearest the bracket, a secant through two, "
        "and from one run alone a line in η from m_0. Each run is aimed at the estimated root, or one "
        "tolerance from a bracket end when the root lies within that, so that it closes the bracket; "
        "a diverged run counts as too high, and where interpolation is poor (no estimate inside "
        "the bracket, the margin and the gain disagreeing, the margin not halving from one side) "
        "it bisects. It stops, as bisection does, when a run that did not flip and one that did "
        "are within the tolerance, and η_c is, as there, the lowest LR that flipped: both ends of "
        "the answer are runs. The search is a pure function of the stored runs "
        "(resumable); `--search bisect` keeps the bisection. The results table records which "
        "search the runs are the path of (`search`) and the runs it used for η_c (`runs_eta_c`).",
        "",
    ]
    if not found:
        return [*lines, "Not yet measured: `python -m benchmarks.root_search`."]
    return [*lines, *_replay_lines(found), *_live_lines(found), *_root_sweep_lines(result)]


def _count(value) -> int | None:
    return None if value is None or value != value else int(value)


def _root_sweep_lines(result: dict) -> list[str]:
    """The benchmark sweeps that were themselves root searches (the third model's), runs per η_c."""
    by_sweep: dict[str, list[dict]] = {}
    for r in result.get("per_context", []):
        # The third model's sweeps were root searches from the start (the others bisected); "mixed"
        # is one whose start moved when its prediction was redone to add the replay.
        if r["model"] in OPTIONAL_MODELS and r.get("eta_c") is not None:
            by_sweep.setdefault(r["sweep"], []).append(r)
    if not by_sweep:
        return []
    rows = []
    for name, found in by_sweep.items():
        runs = [r["runs_used"] for r in found]
        starts = sorted({r.get("start_variant") or "another LR" for r in found})
        rows.append(
            f"| {name} | {', '.join(starts)} | {len(runs)} | {float(np.median(runs)):g} | {max(runs)} |"
        )
    return [
        "",
        "**The third model's sweeps, root searches for real** (without the η_max search, so every run went to "
        "η_c), from the κ = 1 prediction each had when it started, each η_c bracketed to the same "
        "tolerance:",
        "",
        "| sweep | started at | contexts | median runs | max |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _replay_lines(found: dict) -> list[str]:
    rows = [
        f"| {ROOT_SEARCH_STARTS[key.split('/')[0]]} | {key.split('/')[1]} | {s['contexts']} | "
        f"{s['median_runs']:g} | {s['mean_runs']:.2f} | {s['max_runs']} | {s['agree']}/{s['contexts']} |"
        for key, s in found["summary"].items()
    ]
    sweeps = [
        f"| {name} | {s['median_runs']:g} ({s['mean_runs']:.2f}, max {s['max_runs']}) | "
        f"{s['bisect']['median_runs']:g} | {s['agree']}/{s['contexts']} |"
        for name, s in found["by_sweep"].items()
    ]
    inside = found["summary"]["two-point/root"]
    return [
        "**Dry run on the stored sweeps** (`python -m benchmarks.root_search`; not the replay "
        "prediction): no new training. Each "
        "context's m_T(η) is interpolated from its stored bisection runs (a monotone cubic in ln η "
        "through them; a line in η from m_0 below them and through the last two above), and both "
        "searches are driven on that curve. *Agree*: the search's η_c within "
        f"{found['tolerance']:.0%} of the stored η_c and its bracket overlapping the stored one. The "
        f"stored sweeps themselves took a median {found['stored_median_runs']:g} runs.",
        "",
        "| start | search | contexts | median runs | mean | max | agree |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| sweep (two-point start) | root: median runs (mean, max) | bisect: median runs | agree |",
        "|---|---|---|---|",
        *sweeps,
        "",
        f"Strictly inside the stored bracket: {inside['inside_stored']}/{inside['contexts']}. Both "
        "searches report the lowest LR that flipped, each less than the tolerance above the true "
        "η_c, so one lands inside the other's bracket only when it happens to fall lower; that is "
        "why agreement is judged within the tolerance.",
    ]


def _live_lines(found: dict) -> list[str]:
    live = found.get("live")
    if not live:
        return ["", "Not yet run for real: `python -m benchmarks.root_search --live 3`."]
    runs = [r["runs"] for r in live]
    rows = [
        f"| {r['context']} | {r['runs']} | {r['eta_c']:.4g} | {r['bracket'][0]:.4g}–{r['bracket'][1]:.4g} | "
        f"{r['stored']['eta_c']:.4g} | {r['stored']['runs']} | {r['ratio_to_stored'] - 1:+.2%} | "
        f"{'yes' if r['agrees'] else '**no**'} |"
        for r in live
    ]
    stored = [r["stored"]["runs"] for r in live]
    seconds = sum(r["wall_time_s"] for r in live)
    device = MACHINES.get((live[0].get("device") or "cpu").split(":")[0], live[0].get("device"))
    return [
        "",
        f"**For real** (`--live {len(live)}`: SmolLM2-135M LoRA, T = 50, cosine, AdamW, seed 0, on "
        f"{device}, the stored predictions reused; runs in `benchmarks/results/sweeps-root/`): a "
        f"median {float(np.median(runs)):g} runs per context where the stored bisection took "
        f"{float(np.median(stored)):g}; {seconds:.0f} s of runs in all (the CPU shared with other jobs).",
        "",
        "| context | runs | η_c | bracket | stored η_c (bisection) | its runs | difference | agree |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]


def _fraction_words(fraction: float) -> str:
    return {0.5: "half", 1.0: "all", 0.25: "a quarter"}.get(fraction, f"{fraction:.0%}")


def class_table_lines(result: dict) -> list[str]:
    from phantomlens.classify import LORA_SUFFICIENT_FRACTION

    lines = [
        "",
        "## Architecture classes and LoRA sufficiency",
        "",
        "| model | mean G | χ = d·E[G²] | χ/d | effective dim / d | class | LoRA predicted | LoRA measured | right? |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, c in result["classes"].items():
        lora = result["lora_sufficiency"].get(model)
        measured = (
            f"{'sufficient' if lora['sufficient'] else 'not sufficient'} "
            f"({lora['flipped_below_divergence']}/{lora['contexts']} contexts flip)"
            if lora
            else "not swept"
        )
        right = ("yes" if lora["prediction_right"] else "**no**") if lora else DASH
        lines.append(
            f"| {model} | {c['mean_overlap']:.3f} | {c['crowding']:.1f} | {c['mean_squared_overlap']:.3f} | "
            f"{c['effective_dimension_fraction']:.3f} | {c['geometry_class']} | "
            f"{'sufficient' if c['lora_sufficient_predicted'] else 'not sufficient'} | {measured} | {right} |"
        )
    return [
        *lines,
        "",
        "LoRA suffices for a context when some LR below the divergence limit flips it within T;",
        f"for a model when it does for at least {_fraction_words(LORA_SUFFICIENT_FRACTION)} of the contexts "
        "(`LORA_SUFFICIENT_FRACTION`).",
    ]


def time_lines(result: dict) -> list[str]:
    seconds = result["compute_seconds"]
    return [
        "",
        "Running time (the runs' own wall-clock times, summed): sweeps "
        + device_times(seconds["sweep_runs"], notes=SHARED_CPU)
        + "; range tests "
        + device_times(seconds["range_tests"], notes=SHARED_CPU)
        + ". The command is resumable and skips stored runs"
        + (
            "; the sweeps with GPU times ran there (`--device auto` picks CUDA when visible)."
            if "cuda" in seconds["sweep_runs"]
            else "."
        ),
        "",
    ]


def write_doc(result: dict) -> None:
    """docs/critical-lr.md, from the benchmark JSON alone."""
    sections = (
        intro_lines,
        use_lines,
        context_lines,
        kappa_and_blind_lines,
        budget_lines,
        lora_gap_lines,
        kappa_domain_lines,
        unseen_lines,
        cost_and_range_lines,
        root_search_lines,
        class_table_lines,
        time_lines,
    )
    DOC.write_text("\n".join(line for section in sections for line in section(result)))


def main() -> int:
    from phantomlens.contexts import builtin_contexts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--modes", nargs="+", default=["lora", "full"])
    parser.add_argument("--contexts", type=int, default=N_CONTEXTS, help="the first N built-in contexts")
    parser.add_argument("--skip-range-test", action="store_true")
    parser.add_argument("--doc-only", action="store_true", help="only summarise what is stored")
    parser.add_argument(
        "--refresh-predictions",
        action="store_true",
        help="make again the stored predictions that predate the replay variant (slow for full fine-tuning)",
    )
    args = parser.parse_args()
    contexts = [c.name for c in builtin_contexts()[: args.contexts]]
    started = time.perf_counter()
    if not args.doc_only:
        run_sweeps(args.models, args.modes, contexts, args.refresh_predictions)
        if not args.skip_range_test:
            run_range_tests(args.models, args.modes, contexts)
    result = summarize(args.models, args.modes, contexts, time.perf_counter() - started)
    summary = {k: result[k] for k in ("kappa", "blind", "cost", "lora_sufficiency", "range_test")}
    print(json.dumps(summary, indent=2, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
