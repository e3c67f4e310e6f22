"""Fact-set runs: N facts trained jointly, each fact read at its branch position at every step.

Each step is one optimiser step on the mean over facts of each fact's mean cross-entropy over its
target tokens (micro-batches accumulate gradients). The readout of every fact comes from that
same forward pass, before the update; after the last update one no-grad pass gives the final
readout, so a T-step run has T + 1 rows per fact. Every fact gets its own transitions analysis,
outcome and silent flag; the run reports the fraction flipped and names the silent failures. The
protocol is that of single-context runs (docs/runs.md); facts are defined in docs/method.md.
"""

from __future__ import annotations

import math
import time
import warnings

import torch

from phantomlens.errors import PhantomLensError
from phantomlens.factreadout import FactReadout
from phantomlens.factresults import FACT_SET, FactSetEvents, FactSetSummary
from phantomlens.factrun import FactSetResult, fact_outcome
from phantomlens.facts import (
    Fact,
    TokenizedFact,
    encode_answer,
    encode_prompt,
    load_facts,
    several_tokens,
    tokenize_fact,
)
from phantomlens.factset import FactBatch, forward_chunk
from phantomlens.forward import evaluation, output_embedding
from phantomlens.loop import Outcome, check_divergence
from phantomlens.session import embedding_sha256, make_optimizer, schedule_factor, versions
from phantomlens.settings import AnalysisConfig, RunConfig


def config_facts(config: RunConfig) -> list[Fact] | None:
    """The facts a config names before any model is loaded: its fact file, or None."""
    if config.facts is None:
        return None
    facts = load_facts(config.facts)
    return [Fact(**{**f.to_dict(), "chat": f.chat or config.chat}) for f in facts]


def single_fact(config: RunConfig, tokenizer) -> Fact | None:
    """The run's one context as a fact when it needs the fact machinery (a chat prompt, or an
    answer of several tokens); None when it is a single-token context, trained as before."""
    from phantomlens.contexts import lookup_context

    builtin = lookup_context(config.context)
    text = builtin.text if builtin else config.context
    target = config.target or (builtin.target if builtin else None)
    competitor = (
        config.competitor if (config.competitor or not builtin or config.target) else builtin.competitor
    )
    if target is None or not text:
        return None
    if not (config.chat or several_tokens(tokenizer, text, target, competitor)):
        return None
    return Fact(prompt=text, target=target, competitor=competitor or "", chat=config.chat)


def resolve_fact(tokenizer, model, fact: Fact) -> TokenizedFact:
    """Tokenise ``fact``; a missing competitor is picked by the documented rule, which needs a
    single-token target."""
    if fact.competitor:
        return tokenize_fact(tokenizer, fact)
    from phantomlens.contexts import pick_competitor

    prompt, prompt_ids = encode_prompt(tokenizer, fact)
    target_ids = encode_answer(tokenizer, fact, prompt, "target")
    if len(target_ids) != 1:
        raise PhantomLensError(
            f"fact {fact.label!r}: the target is {len(target_ids)} tokens, so a competitor must be "
            "given (the rule that picks one works on single-token targets)"
        )
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    picked = pick_competitor(model, ids, target_ids[0])
    # The picked token itself is trained against: its decoded text need not encode back to it.
    text = tokenizer.decode([picked])
    if not text.strip() or text.strip() == fact.target.strip():
        text = f"[token {picked}]"  # a byte piece or a space: name the token, not its rendering
    chosen = Fact(fact.prompt, fact.target, text, fact.name, fact.chat)
    return TokenizedFact(chosen, prompt_ids, target_ids, (picked,), 0)


class FactSetLoop:
    """The T steps of a fact-set run: forward per micro-batch, readout, divergence check, update."""

    def __init__(self, config: RunConfig, model, batch: FactBatch, trainable: list, step_callback=None):
        self.config, self.model, self.batch = config, model, batch
        self.optimizer = make_optimizer(config, trainable)
        self.unembedding = output_embedding(model)
        self.readout = FactReadout(self.unembedding, batch.target_ids, batch.competitor_ids, config.readout)
        self.step_callback = step_callback
        self.outcome = Outcome(cutoff=config.diverge_loss)
        self.streak = 0

    def run(self, bar) -> Outcome:
        for step in range(self.config.steps):
            loss = self._step(step)
            if self.outcome.status == "diverged" or self._should_stop(step):
                break
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
        if self.outcome.status == "completed":
            self._final_readout()
        self.optimizer.zero_grad(set_to_none=True)
        return self.outcome

    def _forward(self, backward: bool):
        """Every micro-batch's forward (and backward); the per-fact terms, concatenated."""
        outputs = []
        for chunk in self.batch.chunks:
            out = forward_chunk(self.model, chunk)
            if backward:
                (out.loss.sum() / len(self.batch)).backward()
            outputs.append(out)
        logits = torch.cat([o.branch_logits for o in outputs])
        sequence = {
            "loss": torch.cat([o.loss.detach() for o in outputs]),
            "logp_target": torch.cat([o.logp_target for o in outputs]),
            "logp_competitor": torch.cat([o.logp_competitor for o in outputs]),
        }
        return logits, sequence

    def _step(self, step: int) -> float:
        config = self.config
        lr = config.peak_lr * schedule_factor(step, config.steps, config.schedule, config.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits, sequence = self._forward(backward=True)
        self.readout.record(step, lr, logits, sequence)
        # The one value read back per step: the joint loss and whether every logit is finite.
        loss, finite = torch.stack(
            [sequence["loss"].mean().double(), torch.isfinite(logits).all().double()]
        ).tolist()
        if check_divergence(self.outcome, step, loss, bool(finite), self.unembedding.shape[0]):
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.outcome.updates += 1
        return loss

    def _should_stop(self, step: int) -> bool:
        reason = ""
        if self.config.early_stop:
            margins = self.readout.values[-1][:, 1].tolist()  # a host read only when asked to stop early
            self.streak = self.config.stop.next_streak(self.streak, margins)
            if self.streak >= self.config.stop.patience:
                reason = (
                    f"every fact kept margin ≥ {self.config.stop.margin_safe:g} for "
                    f"{self.config.stop.patience} steps"
                )
        if not reason and self.step_callback is not None and self.step_callback(step, None):
            reason = "step_callback asked to stop"
        if reason:
            self.outcome.stopped_early, self.outcome.stop_reason = True, reason
        return bool(reason)

    def _final_readout(self) -> None:
        with evaluation(self.model):
            logits, sequence = self._forward(backward=False)
        self.readout.record(self.outcome.updates, math.nan, logits, sequence)
        if not bool(torch.isfinite(logits).all()) or not bool(torch.isfinite(sequence["loss"]).all()):
            self.outcome.status, self.outcome.reason = "diverged", "non-finite loss or logits"
            self.outcome.diverged_step = self.outcome.updates


def train_facts(
    config: RunConfig,
    model,
    tokenizer,
    facts: list[Fact],
    *,
    progress: bool | None = None,
    step_callback=None,
    analysis: AnalysisConfig | None = None,
):
    """Train ``facts`` jointly on the prepared ``model``; the analysed ``FactSetResult``."""
    from tqdm.auto import tqdm

    tokenized = _tokenized(tokenizer, model, facts)
    device = output_embedding(model).device
    batch = FactBatch(tokenized, device, config.micro_batch)
    trainable = [p for p in model.parameters() if p.requires_grad]
    hash_start = embedding_sha256(model)
    loop = FactSetLoop(config, model, batch, trainable, step_callback)
    bar = tqdm(
        total=config.steps,
        desc="fine-tuning facts",
        unit="step",
        leave=False,
        disable=None if progress is None else not progress,
    )
    started = time.perf_counter()
    outcome = loop.run(bar)
    bar.close()
    trajectory = loop.readout.frame([t.fact.label for t in tokenized])
    context = {
        "outcome": outcome,
        "hashes": (hash_start, embedding_sha256(model)),
        "trainable": sum(p.numel() for p in trainable),
        "wall": time.perf_counter() - started,
        "vocab_size": loop.unembedding.shape[0],
        "device": str(device),
    }
    summary, events = summarize_facts(trajectory, tokenized, config, context, analysis)
    return FactSetResult(summary, trajectory, events)


def _tokenized(tokenizer, model, facts: list[Fact]) -> list[TokenizedFact]:
    tokenized = [resolve_fact(tokenizer, model, fact) for fact in facts]
    for given, resolved in zip(facts, tokenized, strict=True):
        if not given.competitor:
            warnings.warn(
                f"phantomlens: fact {given.label!r}: competitor picked automatically: "
                f"{resolved.fact.competitor!r}",
                stacklevel=3,
            )
    labels = [t.fact.label for t in tokenized]
    if len(set(labels)) != len(labels):
        raise PhantomLensError("two facts have the same name (or the same prompt and no name)")
    return tokenized


def summarize_facts(
    trajectory,
    tokenized: list[TokenizedFact],
    config: RunConfig,
    context: dict,
    analysis: AnalysisConfig | None = None,
) -> tuple[FactSetSummary, FactSetEvents]:
    """Each fact's transitions analysis and outcome, and the run's summary."""
    analysis = analysis or AnalysisConfig()
    outcome: Outcome = context["outcome"]
    hashes = context["hashes"]
    records, events = [], {}
    for fact in tokenized:
        rows = trajectory[trajectory["fact"] == fact.fact.label].reset_index(drop=True)
        record, fact_events = fact_outcome(rows, fact, outcome.status, hashes, analysis)
        records.append(record)
        events[fact.fact.label] = fact_events
    notes, ahead = _notes(config, hashes, records)
    joint = trajectory.groupby("step", sort=True)["loss"].mean()
    finite = joint[joint.map(math.isfinite)]
    summary = FactSetSummary(
        kind=FACT_SET,
        status=outcome.status,
        status_reason=outcome.reason,
        diverged_step=outcome.diverged_step,
        stopped_early=outcome.stopped_early,
        stop_reason=outcome.stop_reason,
        steps_completed=outcome.updates,
        n_facts=len(records),
        n_flipped=sum(r.flipped_at_end for r in records),
        n_ahead_at_start=len(ahead),
        fraction_flipped=sum(r.flipped_at_end for r in records) / len(records),
        silent_failures=[r.name for r in records if r.silent],
        outcomes={
            name: sum(r.outcome == name for r in records) for name in sorted({r.outcome for r in records})
        },
        loss_initial=float(joint.iloc[0]),
        loss_final=float(finite.iloc[-1]) if len(finite) else math.nan,
        embedding_sha256_start=hashes[0],
        embedding_sha256_end=hashes[1],
        embeddings_unchanged=hashes[0] == hashes[1],
        geometry="centred" if config.readout.center else "raw",
        diverge_loss_cutoff=outcome.cutoff,
        vocab_size=context["vocab_size"],
        device=context["device"],
        trainable_parameters=context["trainable"],
        wall_time_s=round(context["wall"], 2),
        notes=notes,
        config=config.resolved().to_dict(),
        versions=versions(),
        facts=records,
        analysis_thresholds=analysis.to_dict(),
    )
    return summary, FactSetEvents(kind=FACT_SET, facts=events, thresholds=analysis.to_dict())


def _notes(config: RunConfig, hashes: tuple[str, str], records: list) -> tuple[list[str], list[str]]:
    """The run's notes, and the facts whose target already led at step 0."""
    notes = []
    if config.mode == "lora" and hashes[0] != hashes[1]:
        notes.append("WARNING: the embedding matrix changed under LoRA")
    ahead = [r.name for r in records if r.margin_initial > 0]
    if ahead:
        shown = ", ".join(ahead[:5]) + (", …" if len(ahead) > 5 else "")
        notes.append(
            f"{len(ahead)} of {len(records)} facts had the target ahead at step 0 (nothing to flip; "
            f"they count as flipped if they stay ahead): {shown}"
        )
    return notes, ahead
