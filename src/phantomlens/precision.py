"""Mixed-precision training that keeps the readout in fp32.

Under ``precision="bf16"`` the model's forward runs inside ``torch.autocast`` (bfloat16 matrix
products, fp32 master weights and optimiser state, as the HF Trainer's ``bf16=True`` does), except
the LM head: a forward hook recomputes the head's output from its input in fp32. The logits, hence
the loss, the margin and the whole readout, are fp32 numbers from a bf16 body; a bf16 head would
round a logit of 20 to the nearest 0.125, coarser than many margins this tool is about.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from phantomlens.forward import output_embedding

PRECISIONS = ("fp32", "bf16")

#: The note a mixed-precision run carries in its summary.
NOTE = "trained under bf16 autocast; the LM head, the logits, the loss and the readout in fp32"


def _fp32_head(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    with torch.autocast(output.device.type, enabled=False):
        bias = getattr(module, "bias", None)
        return torch.nn.functional.linear(
            inputs[0].float(), module.weight.float(), None if bias is None else bias.float()
        )


@contextlib.contextmanager
def mixed_precision(model: torch.nn.Module, precision: str) -> Iterator[None]:
    """Run the block under ``precision``; the model is left without hooks afterwards."""
    if precision == "fp32":
        yield
        return
    output_embedding(model)  # a clear error for a model without an LM head
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(_fp32_head)
    try:
        # No cast cache: it keeps the first bf16 copy of every weight for as long as the context
        # lasts, so a whole run inside one context would never see its own updates.
        with torch.autocast(head.weight.device.type, dtype=torch.bfloat16, cache_enabled=False):
            yield
    finally:
        handle.remove()
