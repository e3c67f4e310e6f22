"""The model's own forward pass, read at the last position: logits, the output embedding, token states.

phantomlens never re-implements a model: every number comes from the model's own ``forward``
(``last_token_logits``) and its own output-embedding module (``output_embedding``), tied or untied,
PEFT-wrapped or not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch


def output_embedding(model) -> torch.Tensor:
    """The unembedding matrix U [V, d] of any causal LM, PEFT-wrapped or not, tied or untied."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        from phantomlens.errors import PhantomLensError

        raise PhantomLensError(
            f"{type(model).__name__} exposes no output embedding (get_output_embeddings() gave "
            f"{type(head).__name__}); phantomlens needs a causal LM with an LM head"
        )
    return head.weight


def last_token_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The model's own next-token logits [V] after ``input_ids`` (1 × L), from its own forward."""
    # The context is tokenised on the CPU; the model may live on an accelerator.
    input_ids = input_ids.to(model.get_input_embeddings().weight.device)
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    return out.logits[0, -1]


def token_states(unembedding: torch.Tensor, ids: torch.Tensor, center: bool) -> torch.Tensor:
    """Unit token states ê for the rows ``ids`` (float32, [len(ids), d]), raw or centred."""
    rows = unembedding[ids].float()
    if center:
        rows = rows - unembedding.float().mean(dim=0)
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@contextlib.contextmanager
def evaluation(model) -> Iterator[None]:
    """Eval mode and no autograd for the block; every submodule's own mode is restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def answer_logprobs(model, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> torch.Tensor:
    """log p(a_k | x, a_<k) for each answer token [K], float64, from one teacher-forced forward pass."""
    ids = torch.tensor([[*prompt_ids, *answer_ids]], device=model.get_input_embeddings().weight.device)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
    start = len(prompt_ids) - 1  # the logits at position t predict token t + 1
    log_p = torch.log_softmax(logits[start : start + len(answer_ids)].double(), dim=-1)
    answer = torch.tensor(answer_ids, device=log_p.device)
    return log_p[torch.arange(len(answer_ids), device=log_p.device), answer]


def sequence_margin(
    model, prompt_ids: Sequence[int], target_ids: Sequence[int], competitor_ids: Sequence[int]
) -> torch.Tensor:
    """m = ℓ(target | x) − ℓ(competitor | x), one forward pass per answer; for one-token answers it
    equals the logit difference z_c − z_n at the prompt's last position."""
    target = answer_logprobs(model, prompt_ids, target_ids).sum()
    return target - answer_logprobs(model, prompt_ids, competitor_ids).sum()
