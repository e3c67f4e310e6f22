"""Many facts in one batch: the teacher-forced forward pass, the answer loss and sequence margins.

A fact set F = {f_1..f_N} is trained jointly: each step's loss is the mean over facts of each
fact's mean cross-entropy over its target answer's tokens (prompt tokens masked, as in the Hugging
Face label convention). Every fact is read from that same forward pass: the logits at its branch
position k* (where target and competitor first differ) give the readout, and the target's sequence
log-likelihood ℓ(a|x) comes with the loss. The competitor's ℓ(b|x) shares everything up to the
branch, so a separate no-grad pass over the competitor is needed only for competitor tokens after
the branch. Facts are processed in micro-batches of at most ``micro_batch``; gradients accumulate,
so a step is the step on the mean loss of all N facts (docs/facts.md, "Fact sets").

Sequences are right-padded with an attention mask: the padding comes after every real token, so
causal attention and position ids of the real tokens are those of an unpadded pass. A single fact
with one-token answers is exactly the forward pass of a single-token context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from phantomlens.facts import TokenizedFact


@dataclass
class Chunk:
    """One micro-batch of facts, as tensors on the model's device."""

    index: slice  # which facts of the set
    input_ids: torch.Tensor  # [B, L] prompt + target[:-1], right-padded
    attention_mask: torch.Tensor  # [B, L]
    answer_rows: torch.Tensor  # [ΣK] which sequence each target token belongs to
    answer_positions: torch.Tensor  # [ΣK] the position whose logits predict that token
    answer_tokens: torch.Tensor  # [ΣK] the target tokens
    answer_fact: torch.Tensor  # [ΣK] the fact (within the chunk) of each target token
    answer_lengths: torch.Tensor  # [B] K per fact
    branch_rows: torch.Tensor  # [B] index into the ΣK answer rows of each fact's branch token
    competitor_branch: torch.Tensor  # [B] n: the competitor's token at the branch
    competitor: CompetitorTail | None  # competitor tokens after the branch, when any fact has some


@dataclass
class CompetitorTail:
    """Competitor tokens after the branch: a no-grad pass over prompt + competitor[:-1]."""

    facts: torch.Tensor  # [B'] which facts of the chunk have a tail
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor  # [ΣT] sequence index (within the tail batch)
    positions: torch.Tensor
    tokens: torch.Tensor
    fact: torch.Tensor  # [ΣT] fact index within the chunk


@dataclass
class ChunkOutput:
    """What one micro-batch's forward pass gives, every tensor on the device."""

    loss: torch.Tensor  # [B] mean CE over each fact's target tokens (with autograd when training)
    branch_logits: torch.Tensor  # [B, V] detached: the readout's input
    logp_target: torch.Tensor  # [B] ℓ(a|x), detached, float64 (−K × loss, in double precision)
    logp_competitor: torch.Tensor  # [B] ℓ(b|x), detached, float64


def _padded(sequences: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids.to(device), mask.to(device)


def _teacher_forced(prompts: list[tuple[int, ...]], answers: list[tuple[int, ...]], starts: list[int]):
    """Inputs and (row, position, token) of each answer token from ``starts[f]`` on."""
    sequences, rows, positions, tokens, owners = [], [], [], [], []
    for row, (prompt, answer, start) in enumerate(zip(prompts, answers, starts, strict=True)):
        sequences.append([*prompt, *answer[:-1]])
        for k in range(start, len(answer)):
            rows.append(row)
            positions.append(len(prompt) - 1 + k)  # the logits at position t predict token t + 1
            tokens.append(answer[k])
            owners.append(row)
    return sequences, rows, positions, tokens, owners


def build_chunk(facts: Sequence[TokenizedFact], index: slice, device) -> Chunk:
    part = list(facts[index])
    prompts = [f.prompt_ids for f in part]
    sequences, rows, positions, tokens, owners = _teacher_forced(
        prompts, [f.target_ids for f in part], [0] * len(part)
    )
    ids, mask = _padded(sequences, device)
    lengths = [len(f.target_ids) for f in part]
    offsets = [sum(lengths[:i]) for i in range(len(part))]
    branch_rows = [offset + f.branch for offset, f in zip(offsets, part, strict=True)]
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return Chunk(
        index=index,
        input_ids=ids,
        attention_mask=mask,
        answer_rows=as_tensor(rows),
        answer_positions=as_tensor(positions),
        answer_tokens=as_tensor(tokens),
        answer_fact=as_tensor(owners),
        answer_lengths=as_tensor(lengths),
        branch_rows=as_tensor(branch_rows),
        competitor_branch=as_tensor([f.competitor_id for f in part]),
        competitor=_competitor_tail(part, device, as_tensor),
    )


def _competitor_tail(part: list[TokenizedFact], device, as_tensor) -> CompetitorTail | None:
    with_tail = [i for i, f in enumerate(part) if len(f.competitor_ids) > f.branch + 1]
    if not with_tail:
        return None
    prompts = [part[i].prompt_ids for i in with_tail]
    answers = [part[i].competitor_ids for i in with_tail]
    starts = [part[i].branch + 1 for i in with_tail]
    sequences, rows, positions, tokens, owners = _teacher_forced(prompts, answers, starts)
    ids, mask = _padded(sequences, device)
    return CompetitorTail(
        facts=as_tensor(with_tail),
        input_ids=ids,
        attention_mask=mask,
        rows=as_tensor(rows),
        positions=as_tensor(positions),
        tokens=as_tensor(tokens),
        fact=as_tensor([with_tail[o] for o in owners]),
    )


class FactBatch:
    """A tokenised fact set split into micro-batches, ready for ``forward`` at every step."""

    def __init__(self, facts: Sequence[TokenizedFact], device, micro_batch: int = 32) -> None:
        if not facts:
            raise ValueError("a fact set needs at least one fact")
        self.facts = list(facts)
        self.device = torch.device(device)
        self.chunks = [
            build_chunk(self.facts, slice(start, start + micro_batch), self.device)
            for start in range(0, len(self.facts), micro_batch)
        ]
        self.target_ids = torch.tensor([f.target_id for f in self.facts], device=self.device)
        self.competitor_ids = torch.tensor([f.competitor_id for f in self.facts], device=self.device)

    def __len__(self) -> int:
        return len(self.facts)


def forward_chunk(model, chunk: Chunk, margins: bool = True) -> ChunkOutput:
    """The model's own forward over one micro-batch; the loss keeps autograd when it is enabled.
    ``margins=False`` skips the sequence log-likelihoods (and the competitor's own pass): NaN."""
    logits = model(input_ids=chunk.input_ids, attention_mask=chunk.attention_mask).logits
    answer_logits = logits[chunk.answer_rows, chunk.answer_positions]  # [ΣK, V]
    token_loss = torch.nn.functional.cross_entropy(
        answer_logits.float(), chunk.answer_tokens, reduction="none"
    )
    size = chunk.answer_lengths.numel()
    summed = torch.zeros(size, device=token_loss.device, dtype=token_loss.dtype)
    summed = summed.index_add(0, chunk.answer_fact, token_loss)
    loss = summed / chunk.answer_lengths
    branch_logits = answer_logits[chunk.branch_rows].detach()
    if not margins:
        nan = torch.full((size,), torch.nan, dtype=torch.float64, device=loss.device)
        return ChunkOutput(loss, branch_logits, nan, nan)
    logp_target, logp_competitor = _sequence_logps(model, chunk, answer_logits)
    return ChunkOutput(loss, branch_logits, logp_target, logp_competitor)


def _sequence_logps(model, chunk: Chunk, answer_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ(a|x) and ℓ(b|x) in float64; the competitor's terms up to and at the branch come from the
    target pass (its prefix is the target's), only tokens after the branch need a pass of their own."""
    with torch.no_grad():
        log_p = torch.log_softmax(answer_logits.detach().double(), dim=-1)
        rows = torch.arange(len(log_p), device=log_p.device)
        token_logp = log_p[rows, chunk.answer_tokens]
        size = chunk.answer_lengths.numel()
        zeros = torch.zeros(size, dtype=torch.float64, device=log_p.device)
        logp_target = zeros.index_add(0, chunk.answer_fact, token_logp)
        shared = rows < chunk.branch_rows[chunk.answer_fact]  # target tokens before the branch
        result = zeros.index_add(0, chunk.answer_fact, torch.where(shared, token_logp, 0.0))
        result += log_p[chunk.branch_rows].gather(1, chunk.competitor_branch[:, None])[:, 0]
        tail = chunk.competitor
        if tail is not None:
            tail_logits = model(input_ids=tail.input_ids, attention_mask=tail.attention_mask).logits
            tail_log_p = torch.log_softmax(tail_logits[tail.rows, tail.positions].double(), dim=-1)
            terms = tail_log_p[torch.arange(len(tail.tokens), device=log_p.device), tail.tokens]
            result = result.index_add(0, tail.fact, terms)
        return logp_target, result
