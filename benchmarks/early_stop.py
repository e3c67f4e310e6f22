"""Early stopping at the flip vs loss-plateau stopping (the rule: docs/runs.md, "Early stopping").

    python -m benchmarks.early_stop                                   # both models, both modes
    python -m benchmarks.early_stop --models smollm2-135m --modes lora
    python -m benchmarks.early_stop --doc-only                        # summarise stored runs

Each (model, mode, context) is trained once for the full budget T at a typical fine-tuning LR
(full 1e-5, LoRA 1e-3: common defaults for a single-example fine-tune; ``--lr-full``/``--lr-lora``)
and stored under benchmarks/results/early_stop/ (resumable). Both stopping rules are then applied
to the same trajectory, so "what if we had stopped there" is known exactly, including whether the
flip held for the rest of the budget:

  flip rule      stop after step t, the first t at which margin ≥ m_safe held for `patience`
                 consecutive steps (``StopRule.first_secure_step``: the rule the Probe applies);
  loss plateau   stop after step t, the first t at which the loss had not improved on its best by
                 more than min_delta for `patience` consecutive steps (``probe.loss_plateau_step``:
                 the semantics of Keras and Hugging Face EarlyStopping callbacks, on the training loss).

Writes benchmarks/results/early_stop.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

from phantomlens.probe import loss_plateau_step
from phantomlens.results import find_run_dirs, load_run_dir, load_run_summary
from phantomlens.settings import StopRule
from tools.fmt import DASH, SHARED_CPU, add_seconds, device_times, pct

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "early_stop"
LRS = {"full": 1e-5, "lora": 1e-3}  # a typical fine-tuning LR per mode (single-example fine-tune)
MIN_DELTA = 1e-3  # loss-plateau stopping's min_delta


def evaluate(trajectory, steps: int, margin_safe: float, patience: int, min_delta: float) -> dict:
    """Where each rule stops a recorded run, and whether the flip then held."""
    rows = trajectory[trajectory["step"] < steps]  # readouts before each update
    after = trajectory["margin"].tolist()  # row t + 1 is the state after update t
    flip_t = StopRule(margin_safe=margin_safe, patience=patience).first_secure_step(rows["margin"].tolist())
    plateau_t = loss_plateau_step(rows["loss"].tolist(), min_delta, patience)
    flip_steps = steps if flip_t is None else flip_t + 1
    plateau_steps = steps if plateau_t is None else plateau_t + 1
    return {
        "flip_stop_steps": flip_steps,
        "plateau_stop_steps": plateau_steps,
        "flip_rule_triggered": flip_t is not None,
        "plateau_rule_triggered": plateau_t is not None,
        "saving": 1 - flip_steps / plateau_steps,
        "flip_retained_at_stop": after[flip_steps] > 0,
        "flip_retained_to_end": all(m > 0 for m in after[flip_steps:]),
        "flipped_at_end_of_budget": after[-1] > 0,
        "plateau_flipped_at_stop": after[plateau_steps] > 0,
    }


def run_all(models, modes, contexts, lrs, device: str = "auto") -> None:
    from phantomlens.models import load_model_cached, resolve_device
    from phantomlens.train import finetune

    for model in models:
        todo = [
            (mode, c)
            for mode in modes
            for c in contexts
            if not (RUNS / f"{model}-{mode}" / c / "summary.json").is_file()
        ]
        if not todo:
            continue
        base, tokenizer = load_model_cached(model)
        base.to(resolve_device(device))
        for mode, context in todo:
            out = RUNS / f"{model}-{mode}" / context
            print(f"run {out.relative_to(ROOT)}", flush=True)
            finetune(
                model=copy.deepcopy(base),
                tokenizer=tokenizer,
                context=context,
                mode=mode,
                lr=lrs[mode],
                out=out,
                overwrite=True,
                progress=False,
            )


def per_run_results(models, modes, contexts, rule: dict) -> list[dict]:
    """Both rules applied to every stored run (a diverged run only says so)."""
    per_run = []
    for model in models:
        for mode in modes:
            for context in contexts:
                directory = RUNS / f"{model}-{mode}" / context
                if not (directory / "summary.json").is_file():
                    continue
                summary, trajectory, _ = load_run_dir(directory, events=False)
                entry = {"model": model, "mode": mode, "context": context, "status": summary.status}
                if summary.status == "completed":
                    entry.update(lr=summary.config["lr"], outcome=summary.outcome)
                    entry.update(evaluate(trajectory, summary.config["steps"], **rule))
                per_run.append(entry)
    return per_run


def group_results(frame) -> dict:
    """Per model and mode: how often the flip rule fired, what it saved, and any flip it lost."""
    groups = {}
    for (model, mode), group in frame[frame["status"] == "completed"].groupby(["model", "mode"]):
        flipped = group[group["flip_rule_triggered"]]
        savings = flipped["saving"].tolist()
        groups[f"{model}/{mode}"] = {
            "contexts": len(group),
            "flip_rule_triggered": len(flipped),
            "median_saving": statistics.median(savings) if savings else None,
            "quartiles": statistics.quantiles(savings, n=4) if len(savings) >= 2 else None,
            "median_flip_stop_steps": statistics.median(flipped["flip_stop_steps"]) if len(flipped) else None,
            "median_plateau_stop_steps": statistics.median(group["plateau_stop_steps"]),
            "lost_flip_at_stop": flipped[~flipped["flip_retained_at_stop"]]["context"].tolist(),
            "lost_flip_later": flipped[~flipped["flip_retained_to_end"]]["context"].tolist(),
        }
    return groups


def compute_seconds() -> dict[str, float]:
    """The stored runs' own wall-clock times, per device."""
    seconds: dict[str, float] = {}
    for directory in find_run_dirs(RUNS):
        summary = load_run_summary(directory)
        add_seconds(seconds, summary.device, summary.wall_time_s)
    return seconds


def summarize(models, modes, contexts, lrs, rule: dict, elapsed: float) -> dict:
    import pandas as pd

    from phantomlens.atomic import write_json_atomic

    per_run = per_run_results(models, modes, contexts, rule)
    frame = pd.DataFrame(per_run)
    triggered = frame.get("flip_rule_triggered", pd.Series(dtype=bool)).fillna(False).astype(bool)
    all_savings = frame.loc[triggered, "saving"]
    result = {
        "command": "python -m benchmarks.early_stop " + " ".join(sys.argv[1:]),
        "compute_seconds": compute_seconds(),
        "rule": rule,
        "lrs": lrs,
        "models": models,
        "modes": modes,
        "contexts": contexts,
        "elapsed_s_this_invocation": round(elapsed, 1),
        "overall": {
            "runs": len(frame),
            "flip_rule_triggered": len(all_savings),
            "median_saving": float(all_savings.median()) if len(all_savings) else None,
            "quartiles": statistics.quantiles(all_savings.tolist(), n=4) if len(all_savings) >= 2 else None,
        },
        "groups": group_results(frame),
        "per_run": per_run,
    }
    write_json_atomic(RESULTS / "early_stop.json", result)
    write_doc(result)
    return result


EXAMPLES = """## Copy-paste: Hugging Face `Trainer`

```python
from phantomlens import PhantomCallback, StopRule

callback = PhantomCallback([
    ("She felt a deep sense of", " shame", " guilt"),     # (text, target, competitor)
    "chilly",                                            # or a built-in context name, or a Fact
], rule=StopRule(margin_safe=1.0, patience=3))
trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                  callbacks=[callback])
trainer.train()                 # stops when every context's flip is secure
print(callback.stop_reason)
print(callback.verdicts)        # per context: flipped, silent failure, kinematic, structural
```

The callback's scalars (`phantom/<context>/margin`, `…/p_target`, `…/phi`, `…/signal`, `…/drag`,
`…/flipped`, `phantom/all_flipped`, `phantom/secure_steps`) reach TensorBoard, MLflow or W&B through
the Trainer's own logging at its `logging_steps`, while the rule observes every step. It needs no
evaluation loop, works with PEFT models and TRL's `SFTTrainer`, never changes training (no RNG use,
modes restored), resumes from checkpoints, and at the end gives verdicts and writes a run directory
that `phantomlens report` reads. `stop=False` only logs. See [trainer.md](trainer.md).

## Copy-paste: a plain training loop

```python
from phantomlens import Probe, StopRule

probe = Probe(model, tokenizer, ["shame"], StopRule(margin_safe=1.0, patience=3))
for step, batch in enumerate(loader):
    loss = model(**batch).loss
    loss.backward(); optimizer.step(); optimizer.zero_grad()
    observation = probe.observe(step)            # readouts per context, and the rule's verdict
    if observation.should_stop:
        print(observation.reason)
        break
```

`phantomlens run ... --early-stop [--margin-safe 1.0 --patience 3]` applies the same rule inside
an instrumented run, reusing the training logits (no extra forward pass).
"""


def _rule_lines(result: dict) -> list[str]:
    rule = result["rule"]
    defaults = StopRule()
    source = (
        " (`StopRule` defaults)"
        if (rule["margin_safe"], rule["patience"]) == (defaults.margin_safe, defaults.patience)
        else ""
    )
    return [
        "# Early stopping at the flip",
        "",
        "*The results below are generated by `python -m benchmarks.early_stop` from "
        "`benchmarks/results/early_stop.json`; the runs are stored under `benchmarks/results/early_stop/`.*",
        "",
        "**[explainer]** The flip happens before the loss stops improving, so training can stop sooner.",
        f"The rule ([runs.md](runs.md#early-stopping)): stop at the first step where every watched context has margin ≥ "
        f"{rule['margin_safe']} logit for {rule['patience']} consecutive steps{source}. The baseline: "
        f"stop when the training loss has not improved on its best by more than {rule['min_delta']} for "
        f"{rule['patience']} steps (the semantics of the Keras and Hugging Face EarlyStopping callbacks).",
        "",
    ]


def _overall_lines(result: dict) -> list[str]:
    overall = result["overall"]
    quartiles = overall["quartiles"]
    spread = f" (quartiles {pct(quartiles[0], 0)} – {pct(quartiles[2], 0)})" if quartiles else ""
    return [
        "## Benchmark",
        "",
        f"LRs: full {result['lrs']['full']:g}, LoRA {result['lrs']['lora']:g}; T = 50, cosine, AdamW. Each run "
        "trains the whole budget once; both rules are applied to the same trajectory, so the step each "
        "would have stopped at, and whether the flip then held to the end, are exact.",
        "",
        f"Overall: {overall['runs']} runs, the flip rule fired in {overall['flip_rule_triggered']}; "
        f"median saving {pct(overall['median_saving'], 0)}{spread}. "
        "Saving = 1 − (steps under the flip rule) / (steps under loss-plateau stopping).",
        "",
        "| model / mode | contexts | flip rule fired | median saving | quartiles | median steps: flip / plateau | flip lost at stop | flip lost later |",
        "|---|---|---|---|---|---|---|---|",
    ]


def _group_lines(result: dict) -> list[str]:
    lines = []
    for name, g in result["groups"].items():
        quart = f"{pct(g['quartiles'][0], 0)} – {pct(g['quartiles'][2], 0)}" if g["quartiles"] else DASH
        lines.append(
            f"| {name} | {g['contexts']} | {g['flip_rule_triggered']} | {pct(g['median_saving'], 0)} | {quart} | "
            f"{g['median_flip_stop_steps']} / {g['median_plateau_stop_steps']} | "
            f"{', '.join(g['lost_flip_at_stop']) or 'none'} | {', '.join(g['lost_flip_later']) or 'none'} |"
        )
    return lines


def _run_lines(result: dict) -> list[str]:
    lines = [
        "",
        "Per run:",
        "",
        "| model | mode | context | outcome | flip stop | plateau stop | saving | held at stop | held to end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["per_run"]:
        if r["status"] != "completed":
            lines.append(
                f"| {r['model']} | {r['mode']} | {r['context']} | {r['status']} | – | – | – | – | – |"
            )
            continue
        fired = r["flip_rule_triggered"]
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['context']} | {r['outcome']} | "
            f"{r['flip_stop_steps'] if fired else 'never'} | {r['plateau_stop_steps']} | "
            f"{pct(r['saving'], 0) if fired else DASH} | "
            f"{'yes' if r['flip_retained_at_stop'] else 'NO'} | {'yes' if r['flip_retained_to_end'] else 'NO'} |"
        )
    return lines


def write_doc(result: dict) -> None:
    lines = [
        *_rule_lines(result),
        EXAMPLES,
        *_overall_lines(result),
        *_group_lines(result),
        *_run_lines(result),
    ]
    groups = result["groups"]
    missing = [
        f"{m}/{mode}" for m in result["models"] for mode in result["modes"] if f"{m}/{mode}" not in groups
    ]
    if missing:
        lines += ["", f"Not yet measured: {', '.join(missing)}."]
    lines += [
        "",
        "Running time of the training runs (their wall-clock times summed): "
        + device_times(result["compute_seconds"], notes=SHARED_CPU)
        + ". The command is resumable and skips stored runs; `--device` picks where they run.",
        "",
    ]
    (ROOT / "docs" / "early-stopping.md").write_text("\n".join(lines))


def main() -> int:
    from phantomlens.contexts import builtin_contexts
    from phantomlens.settings import StopRule

    defaults = StopRule()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--modes", nargs="+", default=["lora", "full"])
    parser.add_argument("--contexts", type=int, default=len(builtin_contexts()))
    parser.add_argument("--lr-full", type=float, default=LRS["full"])
    parser.add_argument("--lr-lora", type=float, default=LRS["lora"])
    parser.add_argument("--margin-safe", type=float, default=defaults.margin_safe)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument("--min-delta", type=float, default=MIN_DELTA, help="loss-plateau min_delta")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu, cuda")
    parser.add_argument("--doc-only", action="store_true")
    args = parser.parse_args()
    contexts = [c.name for c in builtin_contexts()[: args.contexts]]
    lrs = {"full": args.lr_full, "lora": args.lr_lora}
    rule = {"margin_safe": args.margin_safe, "patience": args.patience, "min_delta": args.min_delta}
    started = time.perf_counter()
    if not args.doc_only:
        run_all(args.models, args.modes, contexts, lrs, args.device)
    result = summarize(args.models, args.modes, contexts, lrs, rule, time.perf_counter() - started)
    print(json.dumps({k: result[k] for k in ("overall", "groups")}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
