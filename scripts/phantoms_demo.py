"""Regenerate docs/phantoms.md: phantom jumps and failure modes on the real models.

    python scripts/phantoms_demo.py            # runs what is missing, then writes the doc
    python scripts/phantoms_demo.py --doc-only # rewrite the doc from stored runs

Every run is an ordinary `phantomlens run` directory under results/phantoms/ (skipped when complete,
so the script resumes). The doc's numbers are read back from those directories.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "phantoms"
DOC = ROOT / "docs" / "phantoms.md"

# (model, context, mode, lr[, optimizer]): showcase runs, stored as <model>-<mode>-<context>-<lr>
# (with -sgd when the optimiser is SGD; AdamW otherwise).
SHOWCASE = [
    ("smollm2-135m", "shame", "lora", 1e-3),
    ("smollm2-135m", "chilly", "lora", 1e-3),
    ("smollm2-135m", "automobile", "lora", 1e-3),
    ("gemma3-270m", "shame", "lora", 1e-3),
    ("gemma3-270m", "chilly", "lora", 1e-3),
    ("smollm2-135m", "shame", "full", 3e-7),
    ("smollm2-135m", "chilly", "full", 3e-7),
    ("smollm2-135m", "shame", "full", 1e-6),
    ("smollm2-135m", "shame", "full", 1e-5),
    ("smollm2-135m", "shame", "full", 3e-2),
    ("smollm2-135m", "shame", "full", 1.0),
    ("gemma3-270m", "shame", "full", 3e-8),
    ("gemma3-270m", "shame", "full", 3e-7),
    ("gemma3-270m", "shame", "full", 1e-5),
    ("gemma3-270m", "shame", "full", 3e-2),
    ("gemma3-270m", "shame", "full", 1.0),
    ("smollm2-135m", "shame", "full", 10.0, "sgd"),
    ("gemma3-270m", "shame", "full", 10.0, "sgd"),
]


def showcase_name(model: str, context: str, mode: str, lr: float, optimizer: str = "adamw") -> str:
    suffix = "" if optimizer == "adamw" else f"-{optimizer}"
    return f"{model.split('-')[0]}-{mode}-{context}-{lr:g}{suffix}"


# (model, mode, lr): every built-in context at one sub-critical LR, to see how failures look.
SCANS = [
    ("smollm2-135m", "lora", 3e-5),
    ("gemma3-270m", "lora", 3e-5),
]


def run_missing() -> None:
    from phantomlens.contexts import builtin_contexts
    from phantomlens.models import load_model_cached
    from phantomlens.train import finetune

    jobs = [(RUNS / showcase_name(*entry), *entry[:4], (entry[4:] or ("adamw",))[0]) for entry in SHOWCASE]
    for model, mode, lr in SCANS:
        for ctx in builtin_contexts():
            jobs.append((RUNS / f"scan-{model}-{mode}-{lr:g}" / ctx.name, model, ctx.name, mode, lr, "adamw"))
    for out, model, ctx, mode, lr, optimizer in jobs:
        if (out / "summary.json").is_file():
            continue
        base, tokenizer = load_model_cached(model)
        print(f"run {out.relative_to(ROOT)}", flush=True)
        finetune(
            model=copy.deepcopy(base),
            tokenizer=tokenizer,
            context=ctx,
            mode=mode,
            lr=lr,
            optimizer=optimizer,
            out=out,
            overwrite=True,
        )


def load(directory: Path) -> tuple[dict, dict]:
    summary = json.loads((directory / "summary.json").read_text())
    events = json.loads((directory / "events.json").read_text())
    return summary, events


def fmt(value: float, spec: str = "+.3f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def showcase_table() -> list[str]:
    lines = [
        "| run | model | mode | η | outcome | flip step | loss 0 → end | embeddings | jumps (phantom) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    jump_lines = [
        "| run | steps | ΔΦ | R (readout) | Γ (geometric) | X (cross) | R/ΔΦ | verdict | margin v | "
        "pred. (margin) | err | pred. (pair-weighted) | err | ΔG_cn | ΔG_cn ratio | ‖Δê‖ ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in SHOWCASE:
        model, _context, mode, lr = entry[:4]
        name = showcase_name(*entry)
        directory = RUNS / name
        if not (directory / "summary.json").is_file():
            continue
        s, e = load(directory)
        silent = " (silent)" if s["silent"] else ""
        same = "bit-identical" if s["embeddings_unchanged"] else "changed"
        optimizer = s["config"]["optimizer"]
        lines.append(
            f"| `{name}` | {model} | {mode}, {optimizer} | {lr:g} | **{s['outcome']}**{silent} | "
            f"{s['flip_step'] if s['flip_step'] is not None else '–'} | "
            f"{s['loss_initial']:.2f} → {s['loss_final'] + 0.0:.3g} | {same} | "
            f"{e['n_jumps']} ({e['n_phantom_jumps']}) |"
        )
        for j in e["jumps"]:
            jump_lines.append(
                f"| `{name}` | {j['step_from']}→{j['step']} | {j['delta_phi']:+.3f} | {j['readout']:+.3f} | "
                f"{j['geometric']:+.1e} | {j['cross']:+.1e} | {j['readout_fraction']:.3f} | "
                f"{'phantom' if j['phantom'] else 'geometric'} | {j['margin_velocity']:.2f} | "
                f"{j['predicted_delta_phi']:+.3f} | {j['prediction_error']:+.0%} | "
                f"{j['predicted_delta_phi_pair']:+.3f} | {j['prediction_error_pair']:+.0%} | "
                f"{j['delta_overlap']:+.1e} | "
                f"{fmt(j['overlap_change_ratio'], '.2f')} | {fmt(j['displacement_ratio'], '.2f')} |"
            )
    return [*lines, "", "Every jump, decomposed:", "", *jump_lines]


def scan_tables() -> tuple[list[str], dict]:
    lines, stats = [], {}
    for model, mode, lr in SCANS:
        directory = RUNS / f"scan-{model}-{mode}-{lr:g}"
        rows = sorted(directory.glob("*/summary.json")) if directory.is_dir() else []
        if not rows:
            continue
        records = []
        for path in rows:
            s, e = load(path.parent)
            detail = e["outcome_detail"]
            records.append((path.parent.name, s, detail))
        outcomes: dict[str, int] = {}
        for _, s, _ in records:
            outcomes[s["outcome"]] = outcomes.get(s["outcome"], 0) + 1
        silent = sum(s["silent"] for _, s, _ in records)
        changes = sorted(
            d["drag_change"] for _, s, d in records if s["outcome"] in ("kinematic", "structural")
        )
        stats[(model, mode, lr)] = {
            "outcomes": outcomes,
            "silent": silent,
            "n": len(records),
            "drag": changes,
        }
        lines += [
            f"**{model}, {mode}, η = {lr:g}, all {len(records)} built-in contexts**: "
            + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))
            + f"; silent {silent} of {len(records)}.",
            "",
            "| context | outcome | loss 0 → end | margin 0 → end | drag 0 → end (Δ) | max signal |",
            "|---|---|---|---|---|---|",
        ]
        for name, s, d in records:
            lines.append(
                f"| {name} | {s['outcome']}{' (silent)' if s['silent'] else ''} | "
                f"{s['loss_initial']:.2f} → {s['loss_final']:.2f} | "
                f"{s['margin_initial']:+.2f} → {s['margin_final']:+.2f} | "
                f"{d['drag_change']:+.4f} | {d['signal_max']:+.3f} |"
            )
        lines.append("")
    return lines, stats


def reanalyze_all() -> None:
    """Re-run the transitions analysis (no model needed) so every stored run uses the current code."""
    from phantomlens.rundir import reanalyze

    for summary in sorted(RUNS.glob("**/summary.json")):
        reanalyze(summary.parent)


def write_doc() -> None:
    from phantomlens.transitions import AnalysisConfig

    reanalyze_all()
    thresholds = AnalysisConfig()
    scans, stats = scan_tables()
    drag_lines = []
    for (model, mode, lr), st in stats.items():
        if st["drag"]:
            lo, hi = st["drag"][0], st["drag"][-1]
            drag_lines.append(
                f"- {model}, {mode}, η = {lr:g}: drag change over failing runs from {lo:+.4f} to {hi:+.4f} "
                f"({sum(x < -thresholds.drag_worsening for x in st['drag'])} of {len(st['drag'])} "
                f"below −{thresholds.drag_worsening})."
            )
    text = TEMPLATE.format(
        showcase="\n".join(showcase_table()),
        scans="\n".join(scans),
        drag="\n".join(drag_lines) or "- (no scan results yet)",
        t=thresholds,
    )
    DOC.write_text(text)
    print(f"written {DOC.relative_to(ROOT)}")


TEMPLATE = """# Phantom transitions on real models

*Generated by `python scripts/phantoms_demo.py` from the run directories it stores under
`results/phantoms/` (each an ordinary `phantomlens run` directory; rerun `phantomlens analyze` or
`phantomlens report` on any of them). Nothing below is typed by hand except this prose.*

The paper's central claim is negative: the catapult-like jumps in the order parameter are
phantoms of the softmax readout, not geometric phase transitions. phantomlens checks it per jump
by splitting ΔΦ = R + Γ + X (readout, geometric and cross parts, [method.md](method.md)); a jump
is a **phantom** when |R| ≥ {t.phantom_fraction}·|ΔΦ|. Under LoRA the embedding matrix has the same
SHA-256 at the start and the end, and the recorded Γ and X are exactly 0 at every step: there
the jump cannot be geometric, by construction and by measurement.

To check it on your own model and context in one command:

```
phantomlens run --model M --context "your text" --target W --competitor W --mode lora --lr 1e-3
```

The run prints each jump with its decomposition, verdict and predicted size; `phantomlens report
RUN_DIR --out report.html` shows the same with the figures.

## Showcase runs (T = 50, cosine schedule, seed 0)

{showcase}

How to read the prediction columns. A jump's size is predicted from the margin alone: a
two-token softmax before and after the step, p_c − p_n = tanh(m/2), times the overlap damping
1 − G_cn². That is exact when the pair holds all the probability, and it misses when the pair
holds little of it before the jump (the softmax then shares the change with the bulk); weighted
by the pair's probability mass p_c + p_n, the same formula explains the jump to a few percent.
Either way the prediction uses only readout quantities (margins and probabilities), never the
embeddings' motion: the discontinuity lives in the readout. The last three columns test the spontaneous-symmetry-breaking
reading (c and n separating abruptly in embedding space at the jump): ΔG_cn is how much the
target–competitor overlap changed across the jump, and the two ratios compare how fast G_cn and
the token states ê_c, ê_n moved there, per unit learning rate, with their median speed elsewhere
in the run ("–": nothing moved anywhere, as under LoRA). Symmetry breaking would show as a ratio
above {t.symmetry_ratio}, and as a geometric part Γ that carries the jump.

## Failure modes across all built-in contexts

{scans}

## Thresholds and why

| threshold | default | reason |
|---|---|---|
| `jump_min_abs` | {t.jump_min_abs} | Φ lies in [−1, 1]; the flip of a near-synonym pair moves Φ by (1 − G_cn²)·Δ(p_c − p_n), 0.3–0.6 for the pairs above, and ordinary steps move it by < 0.01 |
| `jump_min_z` | {t.jump_min_z} | the conventional cut for a modified z-score outlier (Iglewicz & Hoaglin) against the run's median/MAD step |
| `jump_min_share`, `jump_context` | {t.jump_min_share}, {t.jump_context} | a jump must be sudden: in a two-token softmax a margin moving at v ≥ 1 logit/step puts ≥ 0.4 of the ±2-step change of Φ into one or two steps, while v ≤ 0.5 spreads it (≤ 0.37); this is METHOD's "the readout crosses its transition within one step" |
| `phantom_fraction` | {t.phantom_fraction} | METHOD §6 |
| `symmetry_ratio` | {t.symmetry_ratio} | a jump-time geometric change three times the run's median per-step change would be a clear acceleration |
| `drag_worsening` | {t.drag_worsening} | measured drag changes in failing runs (below) |
| `silent_loss_drop` | {t.silent_loss_drop} | a 10% fall in loss is what a user watching the loss curve reads as "it is learning" |

{drag}

Successful runs also see the drag go to 0, because the bulk's probability drains into the target;
the outcome rule therefore only asks about the drag once the run has failed.

These definitions are phantomlens's own, built on the paper's abstract (see [method.md](method.md)).
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--doc-only", action="store_true", help="do not run anything; rewrite the doc")
    args = parser.parse_args()
    if not args.doc_only:
        run_missing()
    write_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
