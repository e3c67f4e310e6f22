"""docs/facts.md, written from the stored results of ``tools.facts_study`` (nothing is typed by hand).

Every number in the measured part is computed here from results/facts/: the fact-set runs'
summaries and the fact-set predictions. The how-to part is fixed text.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path

from tools.facts_study import FACTS_FILE, PLAN, ROOT, STEPS, prediction_path, run_dir
from tools.fmt import fmt, pct

DOC = ROOT / "docs" / "facts.md"
FIGURE = ROOT / "docs" / "figures" / "facts-overview.png"
FIGURE_RUN = ("smollm2-135m", "lora", 1e-3)
INTRO = Path(__file__).with_name("facts_intro.md")


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """The probability that a flipped fact scores above an unflipped one (ties count half)."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def _score(eta: float | None) -> float:
    """Higher = predicted to flip more easily: −log η̂ (a fact that never flips scores −∞)."""
    if eta is None:
        return -math.inf
    return math.inf if eta == 0 else -math.log(eta)


def evaluate(run: dict, prediction: dict, lr: float) -> dict:
    """How the per-fact predictions sort flipped from unflipped facts in one run."""
    predicted = {f["name"]: f for f in prediction["facts"]}
    rows = [(f, predicted[f["name"]]) for f in run["facts"] if f["name"] in predicted]
    led = [(f, p) for f, p in rows if p["margin_initial"] < 0]  # the competitor led at step 0
    out = {"n_led": len(led), "n_led_flipped": sum(f["flipped_at_end"] for f, _ in led)}
    for kind in ("joint", "single"):
        key = f"eta_c_{kind}"
        for subset, pairs in (("all", rows), ("led", led)):
            labels = [f["flipped_at_end"] for f, _ in pairs]
            out[f"auc_{kind}_{subset}"] = auc([_score(p[key]) for _, p in pairs], labels)
            hits = [
                (p[key] is not None and p[key] <= lr) == y for (_, p), y in zip(pairs, labels, strict=True)
            ]
            out[f"accuracy_{kind}_{subset}"] = sum(hits) / len(hits) if hits else None
    return out


def run_rows() -> list[str]:
    lines = [
        "| model | mode | peak LR | facts | flipped at step 0 | flipped at the end | silent failures "
        "| undone by the set | outcomes | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, mode, lrs in PLAN:
        for lr in lrs:
            run = _load(run_dir(model, mode, lr) / "summary.json")
            if run is None:
                lines.append(f"| {model} | {mode} | {lr:g} | not run yet |  |  |  |  |  |  |")
                continue
            facts = run["facts"]
            at_zero = sum(f["margin_initial"] > 0 for f in facts)
            undone = sum(f["margin_initial"] > 0 and not f["flipped_at_end"] for f in facts)
            outcomes = ", ".join(f"{k} {v}" for k, v in run["outcomes"].items())
            lines.append(
                f"| {model} | {mode} | {lr:g} | {run['n_facts']} | {at_zero} | {run['n_flipped']} "
                f"({pct(run['fraction_flipped'], 0)}) | {len(run['silent_failures'])} | {undone} "
                f"| {outcomes} "
                f"| {run['wall_time_s']:.0f} s ({run['device']}) |"
            )
    return lines


def prediction_rows() -> list[str]:
    lines = [
        "| model | mode | peak LR | facts the competitor led | of them flipped | AUC joint | AUC single "
        "| accuracy joint (κ = 1) | accuracy single (κ = 1) | AUC joint, all facts |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, mode, lrs in PLAN:
        prediction = _load(prediction_path(model, mode))
        for lr in lrs:
            run = _load(run_dir(model, mode, lr) / "summary.json")
            if run is None or prediction is None:
                continue
            e = evaluate(run, prediction, lr)
            lines.append(
                f"| {model} | {mode} | {lr:g} | {e['n_led']} | {e['n_led_flipped']} "
                f"| {fmt(e['auc_joint_led'], '.2f')} "
                f"| {fmt(e['auc_single_led'], '.2f')} | {pct(e['accuracy_joint_led'], 0)} "
                f"| {pct(e['accuracy_single_led'], 0)} | {fmt(e['auc_joint_all'], '.2f')} |"
            )
    return lines


def prediction_verdict() -> list[str]:
    """One sentence comparing the joint and single predictions over every stored run."""
    pairs = []
    for model, mode, lrs in PLAN:
        prediction = _load(prediction_path(model, mode))
        for lr in lrs:
            run = _load(run_dir(model, mode, lr) / "summary.json")
            if run is not None and prediction is not None:
                e = evaluate(run, prediction, lr)
                if e["auc_joint_led"] is not None and e["auc_single_led"] is not None:
                    pairs.append(
                        (
                            e["auc_joint_led"],
                            e["auc_single_led"],
                            e["accuracy_joint_led"],
                            e["accuracy_single_led"],
                        )
                    )
    if not pairs:
        return []

    def mean(index: int) -> float:
        return sum(p[index] for p in pairs) / len(pairs)

    ranks = sum(p[0] > p[1] for p in pairs)
    calls = sum(p[2] > p[3] for p in pairs)
    return [
        f"Over the {len(pairs)} stored runs, the joint-direction prediction ranks the facts better than "
        f"the single-fact one in {ranks} (mean AUC {mean(0):.2f} joint, {mean(1):.2f} single), and its "
        f"flip/no-flip call at κ = 1 is the more accurate in {calls} (mean accuracy {mean(2):.0%} joint, "
        f"{mean(3):.0%} single).",
        "",
    ]


def interference(prediction: dict) -> dict:
    """The gap between a fact's prediction alone and inside the set."""
    facts = [f for f in prediction["facts"] if f["margin_initial"] < 0]
    ratios = [f["eta_c_joint"] / f["eta_c_single"] for f in facts if f["eta_c_joint"] and f["eta_c_single"]]
    return {
        "n": len(facts),
        "median_ratio": statistics.median(ratios) if ratios else None,
        "share_slower": sum(r > 1 for r in ratios) / len(ratios) if ratios else None,
        "pushed_away": sum(f["velocity_joint"] <= 0 for f in facts),
        "pushed_away_alone": sum(f["velocity_single"] <= 0 for f in facts),
        "eta_set_joint": prediction["eta_c_joint_set"],
        "eta_set_single": prediction["eta_c_single_set"],
        "seconds_per_fact": prediction["seconds_per_fact"],
        "multi": sum(f["target_tokens"] > 1 or f["competitor_tokens"] > 1 for f in prediction["facts"]),
        "total": prediction["n_facts"],
    }


def interference_rows() -> list[str]:
    lines = [
        "| model | mode | facts (multi-token) | competitor led at step 0 | median η̂ in set / η̂ alone "
        "| share predicted slower in the set | pushed away: in set / alone | η̂_c(F, q=1) in set / alone "
        "| prediction time per fact |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, mode, _ in PLAN:
        prediction = _load(prediction_path(model, mode))
        if prediction is None:
            lines.append(f"| {model} | {mode} | not run yet |  |  |  |  |  |  |")
            continue
        i = interference(prediction)
        eta_set = f"{fmt(i['eta_set_joint'], '.3g')} / {fmt(i['eta_set_single'], '.3g')}"
        lines.append(
            f"| {model} | {mode} | {i['total']} ({i['multi']}) | {i['n']} | {fmt(i['median_ratio'], '.2f')} "
            f"| {pct(i['share_slower'], 0)} | {i['pushed_away']} / {i['pushed_away_alone']} | {eta_set} "
            f"| {i['seconds_per_fact']:.2f} s |"
        )
    return lines


def shown_run() -> tuple[str, str, float] | None:
    """The run the doc shows in detail: ``FIGURE_RUN``, else the first stored run of the plan."""
    stored = [
        (m, mode, lr)
        for m, mode, lrs in PLAN
        for lr in lrs
        if (run_dir(m, mode, lr) / "summary.json").is_file()
    ]
    return FIGURE_RUN if FIGURE_RUN in stored else (stored[0] if stored else None)


def silent_section() -> list[str]:
    if shown_run() is None:
        return []
    model, mode, lr = shown_run()
    run = _load(run_dir(model, mode, lr) / "summary.json")
    if run is None:
        return []
    silent = [f for f in run["facts"] if f["silent"]]
    lines = [
        f"The silent failures of {model} {mode} at η = {lr:g} ({len(silent)} of {run['n_facts']} facts): "
        "the fact's own loss fell by at least "
        f"{run['analysis_thresholds']['silent_loss_drop']:.0%}, and its target still lost at the end.",
        "",
        "| fact | outcome | margin step 0 → end | loss step 0 → end |",
        "|---|---|---|---|",
    ]
    for f in sorted(silent, key=lambda f: f["margin_final"]):
        lines.append(
            f"| {f['name']} | {f['outcome']} | {f['margin_initial']:+.2f} → {f['margin_final']:+.2f} "
            f"| {f['loss_initial']:.2f} → {f['loss_final']:.2f} |"
        )
    return lines


def data_set_lines() -> list[str]:
    rows = [json.loads(line) for line in FACTS_FILE.read_text().splitlines() if line.strip()]
    categories = Counter(r["name"].split("_")[0] for r in rows)
    listed = ", ".join(f"{name} {count}" for name, count in sorted(categories.items()))
    return [
        f"`data/facts.jsonl` holds {len(rows)} facts written by the project (CC0; see data/README.md): "
        f"{listed}. `python -m tools.validate_facts` checks that every fact tokenises, branches and "
        "fits the token limit for both built-in models.",
    ]


def _missing_sentence() -> str:
    missing = sum(
        not (run_dir(model, mode, lr) / "summary.json").is_file() for model, mode, lrs in PLAN for lr in lrs
    )
    if not missing:
        return ""
    return (
        f" The {missing} rows marked *not run yet* are planned but not measured: "
        "`python -m tools.facts_study` runs them (each is resumable and skips what is stored)."
    )


def write() -> Path:
    if shown_run() is not None:  # drawn again from the stored run, by today's plotting code
        from phantomlens.factrun import FactSetResult
        from phantomlens.plot import figure_png

        FIGURE.parent.mkdir(parents=True, exist_ok=True)
        FIGURE.write_bytes(figure_png(FactSetResult.load(run_dir(*shown_run())).plot()))
    parts = [
        INTRO.read_text().rstrip(),
        "",
        "## Measured: the project's fact set trained jointly",
        "",
        "Generated by `python -m tools.facts_study` from the stored results in results/facts/ "
        f"(rewrite from them alone with `--doc-only`). Every run trains all facts of the data set together, "
        f"{STEPS} steps, cosine schedule with warm-up, AdamW, one step on the mean loss of all facts.",
        "",
        *data_set_lines(),
        "",
        "### Runs",
        "",
        *run_rows(),
        "",
        "*Undone by the set*: facts whose target led at step 0 and lost by the end; training the other "
        "facts pushed them back." + _missing_sentence(),
        "",
        *silent_section(),
        "",
        f"![every fact's margin over the steps]({FIGURE.relative_to(DOC.parent).as_posix()})",
        "",
        "### Does the joint-direction prediction sort flipped from unflipped facts?",
        "",
        "Each fact's η̂_c (first order, κ = 1) was predicted before training, once per model and mode. "
        "A fact is predicted to flip at a run's peak LR η when η̂_c ≤ η. AUC ranks the facts by −log η̂_c "
        "against the measured outcome (flipped at the end or not); 0.5 is chance. The headline columns "
        "count only the facts whose competitor led at step 0: the rest are flipped before training and "
        "would make any predictor look good.",
        "",
        *prediction_rows(),
        "",
        *prediction_verdict(),
        "### Interference: each fact alone versus inside the set",
        "",
        "The single-fact prediction uses the fact's own gradient direction; the joint prediction the "
        "direction of the whole set's gradient, which is what Adam's first step follows. *Pushed away*: "
        "facts whose margin the first update moves away from the flip (A ≤ 0).",
        "",
        *interference_rows(),
        "",
    ]
    DOC.write_text("\n".join(parts) + "\n")
    return DOC
