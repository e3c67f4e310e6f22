"""What ``PhantomCallback`` does at the edges of training: checks and set-up before the first step,
the trajectory saved with each checkpoint, and the verdicts and run directory at the end.

Kept apart from ``callback.py`` so that the callback itself reads as the Trainer's event list.
"""

from __future__ import annotations

import io
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from phantomlens.errors import PhantomLensError
from phantomlens.facts import Fact, TokenizedFact
from phantomlens.probe import FactProbe

logger = logging.getLogger("phantomlens")

#: Where the run directory goes by default, inside the Trainer's ``output_dir``.
EXPORT_DIR = "phantomlens"
#: The trajectory so far, saved in each checkpoint folder so that a resumed run keeps its history.
CHECKPOINT_FILE = "phantomlens-trajectory.parquet"
#: HF ``lr_scheduler_type`` → the schedule a run records (any other is recorded as constant, with a note).
SCHEDULES = {
    "linear": "linear",
    "cosine": "cosine",
    "constant": "constant",
    "constant_with_warmup": "constant",
}


def export_dir(callback, args) -> Path:
    """The run directory the callback writes at the end."""
    return Path(callback.out) if callback.out else Path(args.output_dir) / EXPORT_DIR


def spec_fact(spec: dict) -> Fact:
    """A watched item's spec (``probe.context_specs``) as a fact; a context is a fact whose prompt is
    its text (its competitor may be empty: the documented rule picks one)."""
    if "prompt" in spec:
        return Fact(spec["prompt"], spec["target"], spec.get("competitor") or "", spec["name"], spec["chat"])
    return Fact(spec["text"], spec["target"], spec.get("competitor") or "", spec["name"])


def tokenized_facts(tokenizer, model, specs: list[dict], vocab_size: int) -> list[TokenizedFact]:
    """Every watched item tokenised by the Trainer's tokenizer, checked against the model."""
    from phantomlens.facttrain import resolve_fact

    tokenized = []
    for spec in specs:
        try:
            fact = resolve_fact(tokenizer, model, spec_fact(spec))
        except PhantomLensError as error:
            raise PhantomLensError(f"PhantomCallback: {error}") from None
        ids = [*fact.prompt_ids, *fact.target_ids, *fact.competitor_ids]
        if max(ids) >= vocab_size:
            raise PhantomLensError(
                f"PhantomCallback: fact {fact.fact.label!r} has token id {max(ids)}, beyond the model's "
                f"{vocab_size} output rows: the tokenizer does not belong to this model"
            )
        tokenized.append(fact)
    labels = [t.fact.label for t in tokenized]
    repeated = sorted({name for name in labels if labels.count(name) > 1})
    if repeated:
        raise PhantomLensError(f"PhantomCallback: two watched items are named {repeated[0]!r}; name each")
    return tokenized


def check_export(callback, args, state) -> Path | None:
    """The run directory to write at the end, checked now: an existing folder is replaced only if
    it is an earlier export (a fact-set run directory); anything else is refused before training."""
    from phantomlens.atomic import check_output_dir
    from phantomlens.factresults import is_fact_set

    if not callback.export or not state.is_world_process_zero:
        return None
    out = export_dir(callback, args)
    trainer_dir = Path(args.output_dir).resolve()
    if out.resolve() == trainer_dir or out.resolve() in trainer_dir.parents:
        raise PhantomLensError(
            f"PhantomCallback: out={out} would replace the Trainer's output_dir {args.output_dir} and its "
            "checkpoints; pass out= a folder of its own (the default is <output_dir>/phantomlens)"
        )
    earlier = out.is_dir() and is_fact_set(out)
    if out.is_dir() and any(out.iterdir()) and not earlier:
        raise PhantomLensError(
            f"PhantomCallback: {out} exists and is not a phantomlens run directory; pass out= elsewhere"
        )
    check_output_dir(out, overwrite=True)
    return out


def begin(callback, args, state, model, tokenizer) -> tuple[FactProbe, dict[str, Any]]:
    """Everything checked before the first step; the recorder and what the end will need."""
    from phantomlens.forward import output_embedding
    from phantomlens.session import embedding_sha256

    if model is None:
        raise PhantomLensError("PhantomCallback: the Trainer gave no model")
    if not callable(getattr(model, "get_output_embeddings", None)):
        raise PhantomLensError(
            f"PhantomCallback: {type(model).__name__} is not a causal LM (no get_output_embeddings)"
        )
    unembedding = output_embedding(model)
    rows = unembedding.shape[0]
    tokenized = tokenized_facts(tokenizer, model, callback.contexts, rows)
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else rows
    if size < 0.95 * rows:  # models pad their vocabulary a little, never by a twentieth
        logger.warning(
            "phantomlens: the tokenizer has %d tokens and the model %d output rows: is it this model's "
            "tokenizer? (facts are read through it)",
            size,
            rows,
        )
    config, config_notes = trainer_run_config(callback, args, state, model)
    out = check_export(callback, args, state)
    recorder = FactProbe(
        model, tokenized, center=callback.center, micro_batch=callback.micro_batch, keep=True
    )
    run = {
        "tokenized": tokenized,
        "out": out,
        "started": time.perf_counter(),
        "hash_start": embedding_sha256(model),
        "earlier": None,
        "notes": [*config_notes, *precision_notes(args, unembedding)],
        "config": config,
        "vocab_size": rows,
    }
    if state.global_step > 0:
        resume(callback, args, state, run)
    logger.info(
        "phantomlens: watching %d fact(s)%s",
        len(tokenized),
        f"; run directory at the end: {out}" if out else "",
    )
    return recorder, run


def precision_notes(args, unembedding: torch.Tensor) -> list[str]:
    """What the readout's precision was, said plainly in the run's notes."""
    notes = []
    mixed = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else ""
    if mixed:
        notes.append(
            f"trained with {mixed} mixed precision; the readout and the margins were measured with "
            "autocast off, in the weights' own precision, and computed in float64"
        )
    if unembedding.dtype != torch.float32:
        notes.append(
            f"the model's weights are {str(unembedding.dtype).removeprefix('torch.')}: its logits carry "
            "that rounding; the readout upcasts them to float64"
        )
    for note in notes:
        logger.info("phantomlens: %s", note)
    return notes


def resume(callback, args, state, run: dict) -> None:
    """A run resumed from a checkpoint: its trajectory so far, and the stop rule's counter."""
    import pandas as pd

    key = f"{callback.prefix}/secure_steps"
    logged = [entry[key] for entry in state.log_history if key in entry]
    if callback.secure_steps == 0 and logged:  # without the trajectory, the last logged count
        callback.secure_steps = int(logged[-1])
    path = resumed_checkpoint(args, state) / CHECKPOINT_FILE
    if not path.is_file():
        run["notes"].append(
            f"resumed at step {state.global_step} from a checkpoint without {path.name}: the trajectory "
            "starts there"
        )
        return
    earlier = pd.read_parquet(path)
    earlier = earlier[earlier["step"] <= state.global_step]
    names = [t.fact.label for t in run["tokenized"]]
    if sorted(earlier["fact"].unique()) != sorted(names):
        run["notes"].append(
            f"resumed at step {state.global_step} watching other facts than before the checkpoint: the "
            "trajectory starts there"
        )
        return
    run["earlier"] = earlier
    callback.observed_step = int(earlier["step"].max())
    # The stop rule's counter, recomputed from the margins observed before the checkpoint: exact
    # whatever logging_steps was (the log history holds only the logged steps).
    streak = 0
    for _, rows in earlier.sort_values("step").groupby("step", sort=True):
        streak = callback.rule.next_streak(streak, rows["margin"].tolist())
    callback.secure_steps = streak


def resumed_checkpoint(args, state) -> Path:
    """The checkpoint folder this training resumed from: the path given to ``Trainer.train``
    (read from its frame: the Trainer keeps it nowhere else), else ``<output_dir>/checkpoint-N``."""
    import inspect

    frame = inspect.currentframe()
    try:
        while frame is not None:
            given = frame.f_locals.get("resume_from_checkpoint")
            if isinstance(given, str | Path) and Path(given).is_dir():
                return Path(given)
            frame = frame.f_back
    finally:
        del frame
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def trajectory(callback):
    """The trajectory so far: rows saved before a resume, then this process's observations."""
    import pandas as pd

    frame = callback.recorder.frame()
    earlier = callback._run.get("earlier")
    if earlier is None:
        return frame
    earlier = earlier[earlier["step"] < frame["step"].min()]
    return pd.concat([earlier, frame], ignore_index=True)


def save_checkpoint_trajectory(callback, args, state) -> None:
    """The trajectory so far, next to the checkpoint the Trainer has just written."""
    from phantomlens.atomic import write_bytes_atomic

    folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
    if not folder.is_dir():
        return
    buffer = io.BytesIO()
    trajectory(callback).to_parquet(buffer, index=False)
    write_bytes_atomic(folder / CHECKPOINT_FILE, buffer.getvalue())


def trainer_run_config(callback, args, state, model):
    """The run the Trainer makes, as a ``RunConfig`` record (what ``analyze`` and ``report`` show), and
    notes on what the record cannot say exactly. Built before the first step, so that a setting it
    cannot record is refused then, not after training."""
    from phantomlens.models import describe_model
    from phantomlens.settings import MAX_STEPS, ReadoutConfig, RunConfig

    notes = []
    scheduler = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    if SCHEDULES.get(scheduler) != scheduler:
        recorded = SCHEDULES.get(scheduler, "constant")
        notes.append(f"the Trainer's lr_scheduler_type {scheduler} is recorded as {recorded}")
    steps = max(1, min(int(state.max_steps or state.global_step or 1), MAX_STEPS))
    warmup = args.get_warmup_steps(steps) / steps
    if warmup >= 1:
        notes.append("the warm-up covers every step; recorded as a warm-up fraction just below 1")
        warmup = math.nextafter(1.0, 0.0)
    peft_config = getattr(model, "peft_config", None) or {}
    adapter = next(iter(peft_config.values()), None)
    kind = str(getattr(getattr(adapter, "peft_type", None), "value", "")) if adapter is not None else ""
    settings = {
        "model": describe_model(model),
        "mode": "lora" if adapter is not None else "full",
        "lr": float(args.learning_rate),
        "steps": steps,
        "schedule": SCHEDULES.get(scheduler, "constant"),
        "warmup_fraction": warmup,
        "optimizer": "sgd" if "sgd" in str(getattr(args.optim, "value", args.optim)) else "adamw",
        "weight_decay": float(args.weight_decay),
        "seed": int(args.seed),
        "device": str(args.device),
        "early_stop": callback.stop,
        "stop": callback.rule,
        "readout": ReadoutConfig(center=callback.center, spectral_topk=0),
    }
    if kind == "LORA":
        settings.update(lora_r=int(adapter.r), lora_alpha=float(adapter.lora_alpha))
    elif adapter is not None:
        notes.append(f"PEFT adapters of type {kind or type(adapter).__name__}, recorded as mode lora")
    try:
        return RunConfig(**settings), notes
    except PhantomLensError as error:
        raise PhantomLensError(
            f"PhantomCallback: the Trainer's settings cannot be recorded: {error}"
        ) from None


def finish(callback, args, state, analysis):
    """The verdicts: the analysed ``FactSetResult`` of what the callback observed, exported and told."""
    from phantomlens.factresults import is_fact_set
    from phantomlens.factrun import FactSetResult
    from phantomlens.facttrain import summarize_facts
    from phantomlens.forward import output_embedding
    from phantomlens.loop import Outcome
    from phantomlens.session import embedding_sha256

    run, model = callback._run, callback.recorder.model
    frame = trajectory(callback)
    diverged = run.get("diverged_step")
    stopped = bool(callback.stop_reason) and diverged is None
    outcome = Outcome(
        status="diverged" if diverged is not None else "completed",
        reason="a watched loss or margin became non-finite, or the mean loss passed the cut-off"
        if diverged is not None
        else "",
        diverged_step=diverged,
        stopped_early=stopped,
        stop_reason=callback.stop_reason if stopped else "",
        updates=int(state.global_step),
        cutoff=run.get("cutoff"),
    )
    config = run["config"].replace(steps=max(1, min(int(state.global_step), run["config"].steps)))
    context = {
        "outcome": outcome,
        "hashes": (run["hash_start"], embedding_sha256(model)),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "wall": time.perf_counter() - run["started"],
        "vocab_size": output_embedding(model).shape[0],
        "device": str(output_embedding(model).device),
    }
    summary, events = summarize_facts(frame, run["tokenized"], config, context, analysis)
    notes = [f"recorded by PhantomCallback inside {trainer_name(args)}", *run["notes"], *summary.notes]
    result = FactSetResult(summary.replace(notes=notes), frame, events)
    out = run["out"]
    if out is not None and out.is_dir() and any(out.iterdir()) and not is_fact_set(out):
        logger.warning("phantomlens: %s filled up during training; the run directory is not written", out)
        out = run["out"] = None  # something else wrote there since the check: never replace it
    if out is not None:
        result.save(out, overwrite=True, config=config)
    tell(result, out)
    return result


def trainer_name(args) -> str:
    scheduler = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    return (
        f"a Hugging Face Trainer (optim {getattr(args.optim, 'value', args.optim)}, lr_scheduler_type "
        f"{scheduler}, logging_steps {args.logging_steps})"
    )


def tell(result, out: Path | None) -> None:
    """The verdict table in the log; a warning that names the silent failures."""
    summary = result.summary
    rows = [("fact", "verdict", "margin start → end", "flip step")]
    branch_end = result.trajectory.sort_values("step").groupby("fact")["margin_branch"].last()
    for fact in summary.facts:
        verdict = ("flipped" if fact.outcome == "success" else fact.outcome) + (
            " (silent)" if fact.silent else ""
        )
        if fact.outcome != "success" and branch_end.get(fact.name, 0.0) > 0:
            # The first differing token is won; the answer still loses on its later tokens, where the
            # branch-position readout (and so kinematic/structural) does not look.
            verdict += ", branch token won, later tokens lose"
        flip = "-" if fact.flip_step is None else str(fact.flip_step)
        rows.append((fact.name, verdict, f"{fact.margin_initial:+.3f} → {fact.margin_final:+.3f}", flip))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    where = f"; run directory {out} (phantomlens analyze/report read it)" if out else ""
    failed = summary.n_facts - summary.n_flipped
    level = logging.WARNING if failed else logging.INFO
    logger.log(
        level,
        "phantomlens: %d of %d facts flipped%s\n%s",
        summary.n_flipped,
        summary.n_facts,
        where,
        "\n".join(lines),
    )
    if summary.silent_failures:
        logger.warning(
            "phantomlens: silent failure (the loss fell but the target never beat the competitor): %s",
            ", ".join(summary.silent_failures),
        )


def trainer_schedule(lr_scheduler, steps: int, fallback: list[float]) -> list[float]:
    """The Trainer's own LR multipliers s_t (peak 1) for its T steps, read from its scheduler."""
    lambdas = getattr(lr_scheduler, "lr_lambdas", None)
    if not lambdas:
        return fallback  # not a LambdaLR: the schedule the run records
    factors = [float(lambdas[0](t)) for t in range(steps)]
    peak = max(factors, default=0.0)
    return [f / peak for f in factors] if peak > 0 else fallback


def predict_in_trainer(callback, args, state, lr_scheduler) -> list:
    """First-order η̂_c of every watched fact, alone and inside the set, for the Trainer's own
    schedule and step budget (κ = 1), on a private copy of the model; warns about the facts whose
    predicted critical LR is above the Trainer's learning rate."""
    from phantomlens.factpredict import measure_facts
    from phantomlens.session import schedule_factors

    model = callback.recorder.model
    config = callback._run["config"]
    fallback = schedule_factors(config.steps, config.schedule, config.warmup_fraction)
    total = sum(trainer_schedule(lr_scheduler, config.steps, fallback))
    _, predictions = measure_facts(model, config, callback._run["tokenized"], total, 1.0)
    below = [
        p
        for p in predictions
        if p.eta_c_joint is None or (p.eta_c_joint > config.lr and p.margin_initial < 0)
    ]
    for p in below:
        need = "no LR: its first update moves it away" if p.eta_c_joint is None else f"{p.eta_c_joint:.3g}"
        logger.warning(
            "phantomlens: fact %r is predicted not to flip: the Trainer's learning rate %.3g is below its "
            "critical LR %s (first-order, κ = 1, trained with the other watched facts, this schedule, "
            "%d step(s))",
            p.name,
            config.lr,
            need,
            config.steps,
        )
    return predictions
