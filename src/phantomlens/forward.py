"""The model's own forward pass, read at the last position: logits, the output embedding, token states.

phantomlens never re-implements a model: every number comes from the model's own ``forward``
(``last_token_logits``) and its own output-embedding module (``output_embedding``), tied or untied,
PEFT-wrapped or not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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
