"""Instrumented fine-tuning runs: one context, T steps, the readout at every step.

Each step does one forward pass with autograd; the readout is taken from those same logits before
the update (so instrumentation adds no forward pass), then the optimiser steps. After the last
update one more no-grad forward gives the final readout, so a T-step run has T + 1 rows.
Dropout is off throughout (the model stays in eval mode): the protocol is deterministic.
The protocol is described in docs/runs.md; the readout in docs/method.md.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from phantomlens.contexts import ResolvedContext
from phantomlens.errors import PhantomLensError
from phantomlens.forward import evaluation, last_token_logits, output_embedding
from phantomlens.loop import Outcome, check_divergence
from phantomlens.results import RunEvents, RunSummary
from phantomlens.rundir import RunResult
from phantomlens.session import (
    device_name,
    embedding_sha256,
    make_optimizer,
    prepare_model,
    resolve_run_context,
    schedule_factor,
    versions,
)
from phantomlens.settings import DEFAULT_LR, AnalysisConfig, RunConfig
from phantomlens.trajectory import Instrument
from phantomlens.transitions import analyze, summary_fields

__all__ = ["DEFAULT_LR", "RunConfig", "RunResult", "finetune"]

StepCallback = Callable[[int, dict], bool | None]


class TrainingLoop:
    """The T steps of one run: forward, readout, divergence check, update, stop rules."""

    def __init__(
        self, config: RunConfig, model, tokenizer, spec: ResolvedContext, trainable: list, step_callback=None
    ):
        self.config, self.model, self.tokenizer, self.spec = config, model, tokenizer, spec
        self.optimizer = make_optimizer(config, trainable)
        self.unembedding = output_embedding(model)
        self.instrument = Instrument(self.unembedding, spec.target_id, spec.competitor_id, config.readout)
        self.target = torch.tensor([spec.target_id], device=self.unembedding.device)
        self.step_callback = step_callback
        self.outcome = Outcome(cutoff=config.diverge_loss)
        self.stop_probe = self._stop_probe() if config.early_stop else None

    def _stop_probe(self):
        from phantomlens.probe import Probe

        spec = self.spec
        name = self.config.context if self.config.context and self.config.context != spec.text else "context"
        watched = [{"name": name, "text": spec.text, "target": spec.target, "competitor": spec.competitor}]
        return Probe(self.model, self.tokenizer, watched, self.config.stop)

    def run(self, bar) -> Outcome:
        with self.instrument:
            for step in range(self.config.steps):
                row = self._step(step)
                if self.outcome.status == "diverged" or self._should_stop(step, row):
                    break
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.3f}", margin=f"{row['margin']:+.2f}")
            if self.outcome.status == "completed":
                self._final_readout()
        self.optimizer.zero_grad(set_to_none=True)
        return self.outcome

    def _step(self, step: int) -> dict:
        lr = self.config.peak_lr * schedule_factor(
            step, self.config.steps, self.config.schedule, self.config.warmup_fraction
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits, loss = forward_loss(self.model, self.spec.input_ids, self.target)
        pending = self.instrument.observe(logits)
        if not self._diverged(step, pending.readout.loss, logits):
            update(loss, self.optimizer)  # overlaps with the spectrum of this step's readout
            self.outcome.updates += 1
        return self.instrument.record(pending, step, lr)

    def _diverged(self, step: int, loss: float, logits: torch.Tensor) -> bool:
        finite = bool(torch.isfinite(logits).all())
        return check_divergence(self.outcome, step, loss, finite, self.unembedding.shape[0])

    def _should_stop(self, step: int, row: dict) -> bool:
        reason = ""
        if self.stop_probe is not None:
            from phantomlens.readout import Readout

            name = self.stop_probe.specs[0]["name"]
            observation = self.stop_probe.record(step, {name: Readout.from_dict(row)})
            reason = observation.reason if observation.should_stop else ""
        if not reason and self.step_callback is not None and self.step_callback(step, row):
            reason = "step_callback asked to stop"
        if reason:
            self.outcome.stopped_early, self.outcome.stop_reason = True, reason
        return bool(reason)

    def _final_readout(self) -> None:
        with evaluation(self.model):
            logits = last_token_logits(self.model, self.spec.input_ids)
        row = self.instrument.record(self.instrument.observe(logits), self.outcome.updates, math.nan)
        if not math.isfinite(row["loss"]) or not bool(torch.isfinite(logits).all()):
            self.outcome.status, self.outcome.reason = "diverged", "non-finite loss or logits"
            self.outcome.diverged_step = self.outcome.updates


def finetune(
    config: RunConfig | None = None,
    *,
    model=None,
    tokenizer=None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    step_callback: StepCallback | None = None,
    analysis: AnalysisConfig | None = None,
    **overrides,
) -> RunResult:
    """Run one instrumented fine-tuning run and return its trajectory and summary.

    ``config`` fields may also be given as keyword arguments (a group's too: ``patience=5``). With
    ``model``/``tokenizer`` given, that model is trained in place (LoRA mode wraps it with PEFT
    adapters); otherwise ``config.model`` is loaded. With ``out``, the run directory is written
    atomically; it is checked before training. ``step_callback(step, row)`` is called with each
    step's row after that step's update; returning True stops the run there (the final readout
    then follows, as at the end of T steps).

    A fact file (``facts=``), a chat prompt (``chat=True``) or an answer of several tokens makes
    it a fact-set run (docs/facts.md), which returns a ``FactSetResult``; ``step_callback`` then
    gets ``None`` as the row, since a fact-set run keeps its readouts on the device until the end.
    """
    from phantomlens.atomic import check_output_dir
    from phantomlens.models import dependency_noise_off
    from phantomlens.precision import NOTE as PRECISION_NOTE
    from phantomlens.precision import mixed_precision
    from phantomlens.session import load_for_run

    config = (config or RunConfig()).replace(**overrides)
    if out is not None:
        check_output_dir(Path(out), overwrite)
    config, model, tokenizer = load_for_run(config, model, tokenizer, {})
    facts = _facts_of(config, tokenizer)
    spec = None if facts else resolve_run_context(config, tokenizer, model)
    torch.manual_seed(config.seed)
    # PEFT and transformers deprecation notices (PEFT asks for is_gradient_checkpointing) are theirs.
    with dependency_noise_off():
        model = prepare_model(model, config)
        model.eval()  # dropout off: deterministic, and the readout sees the same function it trains
        if not any(p.requires_grad for p in model.parameters()):
            raise PhantomLensError("the model has no trainable parameters in this mode")
        with mixed_precision(model, config.precision):
            if facts:
                from phantomlens.facttrain import train_facts

                result = train_facts(config, model, tokenizer, facts, progress=progress,
                                     step_callback=step_callback, analysis=analysis)  # fmt: skip
            else:
                result = _train_context(config, model, tokenizer, spec, progress, step_callback, analysis)
    if config.precision != "fp32":
        result.summary = result.summary.replace(notes=[*result.summary.notes, PRECISION_NOTE])
    if out is not None:
        result.save(out, overwrite=overwrite, config=config.resolved())
    return result


def _facts_of(config: RunConfig, tokenizer) -> list | None:
    from phantomlens.facttrain import config_facts, single_fact

    facts = config_facts(config)
    if facts is None:
        fact = single_fact(config, tokenizer)
        facts = [fact] if fact is not None else None
    return facts


def _train_context(config, model, tokenizer, spec, progress, step_callback, analysis) -> RunResult:
    """A single-token context's run: the per-step readout on the host, row by row."""
    from tqdm.auto import tqdm

    trainable = [p for p in model.parameters() if p.requires_grad]
    hash_start = embedding_sha256(model)
    loop = TrainingLoop(config, model, tokenizer, spec, trainable, step_callback)
    bar = tqdm(total=config.steps, desc="fine-tuning", unit="step", leave=False, disable=_quiet(progress))
    started = time.perf_counter()
    outcome = loop.run(bar)
    bar.close()
    trajectory = pd.DataFrame(loop.instrument.rows)
    summary = summarize(
        trajectory,
        config=config,
        spec=spec,
        outcome=outcome,
        hashes=(hash_start, embedding_sha256(model)),
        trainable=sum(p.numel() for p in trainable),
        wall=time.perf_counter() - started,
        unembedding=loop.unembedding,
    )
    return _analysed(summary, trajectory, analysis)


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None shows the bar only on a terminal."""
    return None if progress is None else not progress


def _analysed(summary: dict, trajectory: pd.DataFrame, analysis: AnalysisConfig | None) -> RunResult:
    events = RunEvents.from_dict(analyze(trajectory, summary, analysis))
    summary = {**summary, **summary_fields(events.to_dict())}
    return RunResult(RunSummary.from_dict(summary), trajectory, events)


def forward_loss(model, input_ids: torch.Tensor, target: torch.Tensor):
    """Next-token logits [V] (with autograd) and the cross-entropy −log p(target)."""
    logits = last_token_logits(model, input_ids)
    return logits, torch.nn.functional.cross_entropy(logits.float().unsqueeze(0), target)


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def summarize(
    trajectory: pd.DataFrame,
    *,
    config: RunConfig,
    spec: ResolvedContext,
    outcome: Outcome,
    hashes: tuple[str, str],
    trainable: int,
    wall: float,
    unembedding: torch.Tensor,
) -> dict:
    """The run's summary.json (the schema is documented in docs/runs.md)."""
    notes = list(spec.notes)
    if config.mode == "lora" and hashes[0] != hashes[1]:
        notes.append("WARNING: the embedding matrix changed under LoRA")
        warnings.warn("phantomlens: the embedding matrix changed under LoRA", stacklevel=3)
    status, cutoff = outcome.status, outcome.cutoff
    margins = trajectory["margin"]
    flipped_rows = trajectory.index[margins > 0]
    first, last = trajectory.iloc[0], trajectory.iloc[-1]
    finite = trajectory[trajectory["loss"].map(math.isfinite)]
    final = finite.iloc[-1] if len(finite) else last
    return {
        "status": status,
        "status_reason": outcome.reason,
        "diverged_step": outcome.diverged_step,
        "stopped_early": outcome.stopped_early,
        "flipped": bool(len(flipped_rows)),
        "flip_step": int(trajectory.loc[flipped_rows[0], "step"]) if len(flipped_rows) else None,
        "flipped_at_end": bool(status == "completed" and last["margin"] > 0),
        "steps_completed": int(len(trajectory) - 1) if status == "completed" else int(last["step"]),
        "stop_reason": outcome.stop_reason,
        "margin_initial": float(first["margin"]),
        "margin_final": float(final["margin"]),
        "loss_initial": float(first["loss"]),
        "loss_final": float(final["loss"]),
        "p_target_final": float(final["p_target"]),
        "p_competitor_final": float(final["p_competitor"]),
        "phi_initial": float(first["phi"]),
        "phi_final": float(final["phi"]),
        "overlap_tc_initial": float(first["overlap_tc"]),
        "embedding_sha256_start": hashes[0],
        "embedding_sha256_end": hashes[1],
        "embeddings_unchanged": hashes[0] == hashes[1],
        "geometry": "centred" if config.readout.center else "raw",
        "diverge_loss_cutoff": float(cutoff) if cutoff is not None else None,
        "context": spec.record(),
        "vocab_size": unembedding.shape[0],
        "device": str(unembedding.device),
        "device_name": device_name(unembedding.device),
        "trainable_parameters": trainable,
        "wall_time_s": round(wall, 2),
        "notes": notes,
        "config": config.resolved().to_dict(),
        "versions": versions(),
    }
