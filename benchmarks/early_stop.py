"""Early stopping at the flip vs loss-plateau stopping (METHOD.md §10).

    python benchmarks/early_stop.py                                   # both models, both modes
    python benchmarks/early_stop.py --models smollm2-135m --modes lora
    python benchmarks/early_stop.py --doc-only                        # summarise stored runs

Each (model, mode, context) is trained once for the full budget T at a typical fine-tuning LR
(full 1e-5, LoRA 1e-3: common defaults for a single-example fine-tune; ``--lr-full``/``--lr-lora``)
and stored under benchmarks/results/early_stop/ (resumable). Both stopping rules are then applied
to the same trajectory, so "what if we had stopped there" is known exactly, including whether the
flip held for the rest of the budget:

  flip rule      stop after step t, the first t at which margin ≥ m_safe held for `patience`
                 consecutive steps (phantomlens's StopRule defaults);
  loss plateau   stop after step t, the first t at which the loss had not improved on its best by
                 more than min_delta for `patience` consecutive steps (the semantics of Keras and
                 Hugging Face EarlyStopping callbacks, here on the training loss).

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

from compute_time import add_seconds, device_times

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "early_stop"
LRS = {"full": 1e-5, "lora": 1e-3}  # a typical fine-tuning LR per mode (single-example fine-tune)
MIN_DELTA = 1e-3  # loss-plateau stopping's min_delta


def flip_stop(margins: list[float], margin_safe: float, patience: int) -> int | None:
    """Index t of the readout after which the flip rule stops (None: never)."""
    streak = 0
    for t, margin in enumerate(margins):
        streak = streak + 1 if margin >= margin_safe else 0
        if streak >= patience:
            return t
    return None


def plateau_stop(losses: list[float], min_delta: float, patience: int) -> int | None:
    """Index t after which loss-plateau stopping stops (None: never)."""
    best, wait = float("inf"), 0
    for t, loss in enumerate(losses):
        if loss < best - min_delta:
            best, wait = loss, 0
        else:
            wait += 1
            if wait >= patience:
                return t
    return None


def evaluate(trajectory, steps: int, margin_safe: float, patience: int, min_delta: float) -> dict:
    rows = trajectory[trajectory["step"] < steps]  # readouts before each update
    margins, losses = rows["margin"].tolist(), rows["loss"].tolist()
    after = trajectory["margin"].tolist()  # row t + 1 is the state after update t
    flip_t = flip_stop(margins, margin_safe, patience)
    plateau_t = plateau_stop(losses, min_delta, patience)
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


def summarize(models, modes, contexts, lrs, rule: dict, elapsed: float) -> dict:
    import pandas as pd

    from phantomlens.atomic import write_json_atomic

    per_run = []
    for model in models:
        for mode in modes:
            for context in contexts:
                directory = RUNS / f"{model}-{mode}" / context
                if not (directory / "summary.json").is_file():
                    continue
                summary = json.loads((directory / "summary.json").read_text())
                trajectory = pd.read_parquet(directory / "trajectory.parquet")
                steps = summary["config"]["steps"]
                if summary["status"] != "completed":
                    per_run.append(
                        {"model": model, "mode": mode, "context": context, "status": summary["status"]}
                    )
                    continue
                per_run.append(
                    {
                        "model": model,
                        "mode": mode,
                        "context": context,
                        "status": "completed",
                        "lr": summary["config"]["lr"],
                        "outcome": summary["outcome"],
                        **evaluate(trajectory, steps, **rule),
                    }
                )
    frame = pd.DataFrame(per_run)
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
    all_savings = frame.loc[
        frame.get("flip_rule_triggered", pd.Series(dtype=bool)).fillna(False).astype(bool), "saving"
    ]
    seconds: dict[str, float] = {}
    for path in RUNS.glob("*/*/summary.json"):
        summary = json.loads(path.read_text())
        add_seconds(seconds, summary.get("device"), summary["wall_time_s"])
    result = {
        "command": "python benchmarks/early_stop.py " + " ".join(sys.argv[1:]),
        "compute_seconds": seconds,
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
        "groups": groups,
        "per_run": per_run,
    }
    write_json_atomic(RESULTS / "early_stop.json", result)
    write_doc(result)
    return result


EXAMPLES = """## Copy-paste: Hugging Face `Trainer`

```python
from phantomlens import PhantomCallback

trainer = Trainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
callback = PhantomCallback.attach(trainer, [
    ("She felt a deep sense of", " shame", " guilt"),     # (text, target, competitor)
    "chilly",                                            # or a built-in context name
], margin_safe=1.0, patience=3)
trainer.train()                 # stops when every context's flip is secure
print(callback.stop_reason)
```

`attach` puts the callback ahead of the `report_to` integrations, so `phantom/<context>/margin`,
`…/p_target`, `…/phi`, `…/signal`, `…/drag`, `…/flipped`, `phantom/all_flipped` and
`phantom/secure_steps` reach TensorBoard, MLflow or W&B through the Trainer's own logging. It needs
no evaluation loop (one extra no-grad forward per context per observed step; `every=k` observes
every k steps), works with PEFT models, never changes training (no RNG use, modes restored), and
after `trainer.train(resume_from_checkpoint=...)` it continues its count from the restored log
history. `stop=False` only logs.

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


def _pct(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def write_doc(result: dict) -> None:
    rule = result["rule"]
    overall = result["overall"]
    lines = [
        "# Early stopping at the flip",
        "",
        "*The results below are generated by `python benchmarks/early_stop.py` from "
        "`benchmarks/results/early_stop.json`; the runs are stored under `benchmarks/results/early_stop/`.*",
        "",
        "**[explainer]** The flip happens before the loss stops improving, so training can stop sooner.",
        f"The rule (METHOD.md §10): stop at the first step where every watched context has margin ≥ "
        f"{rule['margin_safe']} logit for {rule['patience']} consecutive steps (`StopRule` defaults). The baseline: "
        f"stop when the training loss has not improved on its best by more than {rule['min_delta']} for "
        f"{rule['patience']} steps (the semantics of the Keras and Hugging Face EarlyStopping callbacks).",
        "",
        EXAMPLES,
        "## Benchmark",
        "",
        f"LRs: full {result['lrs']['full']:g}, LoRA {result['lrs']['lora']:g}; T = 50, cosine, AdamW. Each run "
        "trains the whole budget once; both rules are applied to the same trajectory, so the step each "
        "would have stopped at, and whether the flip then held to the end, are exact.",
        "",
        f"Overall: {overall['runs']} runs, the flip rule fired in {overall['flip_rule_triggered']}; "
        f"median saving {_pct(overall['median_saving'])}"
        + (
            f" (quartiles {_pct(overall['quartiles'][0])} – {_pct(overall['quartiles'][2])})"
            if overall["quartiles"]
            else ""
        )
        + ". Saving = 1 − (steps under the flip rule) / (steps under loss-plateau stopping).",
        "",
        "| model / mode | contexts | flip rule fired | median saving | quartiles | median steps: flip / plateau | flip lost at stop | flip lost later |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in result["groups"].items():
        quart = f"{_pct(g['quartiles'][0])} – {_pct(g['quartiles'][2])}" if g["quartiles"] else "–"
        lines.append(
            f"| {name} | {g['contexts']} | {g['flip_rule_triggered']} | {_pct(g['median_saving'])} | {quart} | "
            f"{g['median_flip_stop_steps']} / {g['median_plateau_stop_steps']} | "
            f"{', '.join(g['lost_flip_at_stop']) or 'none'} | {', '.join(g['lost_flip_later']) or 'none'} |"
        )
    lines += [
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
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['context']} | {r['outcome']} | "
            f"{r['flip_stop_steps'] if r['flip_rule_triggered'] else 'never'} | {r['plateau_stop_steps']} | "
            f"{_pct(r['saving']) if r['flip_rule_triggered'] else '–'} | "
            f"{'yes' if r['flip_retained_at_stop'] else 'NO'} | {'yes' if r['flip_retained_to_end'] else 'NO'} |"
        )
    missing = [
        f"{m}/{mode}"
        for m in result["models"]
        for mode in result["modes"]
        if f"{m}/{mode}" not in result["groups"]
    ]
    if missing:
        lines += ["", f"Not yet measured: {', '.join(missing)}."]
    lines += [
        "",
        "Running time of the training runs (their wall-clock times summed): "
        + device_times(result["compute_seconds"])
        + ". The command is resumable and skips stored runs; `--device` picks where they run.",
        "",
    ]
    (ROOT / "docs" / "early-stopping.md").write_text("\n".join(lines))


def main() -> int:
    from phantomlens.contexts import builtin_contexts
    from phantomlens.probe import StopRule

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
