"""Architecture classes from the bulk geometry of the token states (docs/method.md, 'Architecture classes').

From a fixed-seed sample of token pairs of the raw unit token states ê_i = u_i/‖u_i‖:
mean overlap E[G_ij], crowding χ = d·E[G_ij²] (1 for an isotropic cloud, ≫ 1 when crowded), and
the effective dimension (participation ratio of the covariance spectrum) over d.

Class A ("crowded city") when χ/d = E[G²] ≥ ``CROWDING_BOUNDARY``: a typical random pair's |cosine|
exceeds √(1/8) ≈ 0.35, so every token state shares a large common component. Class B ("open
field") otherwise. The class predicts LoRA sufficiency: class B → LoRA suffices, class A → it
does not (a frozen, crowded unembedding leaves attention-only adapters little room to separate a
near-synonym pair). The prediction is checked against LoRA sweeps in docs/critical-lr.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from phantomlens.errors import PhantomLensError

if TYPE_CHECKING:
    import torch

#: Boundary on χ/d = E[G²]: class A (crowded) at or above it.
CROWDING_BOUNDARY = 0.125
#: A model "needs no full fine-tuning" when LoRA flips at least this fraction of contexts.
LORA_SUFFICIENT_FRACTION = 0.5


@dataclass
class GeometryClass:
    model: str
    vocab_size: int
    hidden_size: int
    pairs: int
    seed: int
    mean_overlap: float  # E[G_ij] over random pairs i ≠ j
    mean_squared_overlap: float  # E[G_ij²]
    crowding: float  # χ = d · E[G_ij²]
    effective_dimension: float  # participation ratio (Σλ)² / Σλ² of the covariance of ê
    effective_dimension_fraction: float  # … / d
    geometry_class: str  # "A" (crowded) or "B" (open)
    boundary: float  # CROWDING_BOUNDARY on χ/d
    lora_sufficient_predicted: bool

    def to_dict(self) -> dict:
        return asdict(self)


#: The most token pairs sampled: each pair costs two d-vectors in memory at once.
MAX_PAIRS = 10_000_000


def classify_geometry(
    model: torch.nn.Module, name: str = "", pairs: int = 200_000, seed: int = 0
) -> GeometryClass:
    """Bulk statistics of the model's output embedding, its class and the LoRA prediction."""
    import torch

    if isinstance(pairs, bool) or not isinstance(pairs, int) or not 1_000 <= pairs <= MAX_PAIRS:
        raise PhantomLensError(f"pairs must be an integer from 1,000 to {MAX_PAIRS:,}, got {pairs!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise PhantomLensError(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")

    from phantomlens.readout import output_embedding

    with torch.no_grad():
        weight = output_embedding(model).detach().float()
        norms = weight.norm(dim=1)
        states = weight[norms > 0] / norms[norms > 0, None]  # Gemma's padding row is all zeros
        vocab, dim = states.shape
        generator = torch.Generator().manual_seed(seed)
        i = torch.randint(0, vocab, (pairs,), generator=generator)
        j = torch.randint(0, vocab - 1, (pairs,), generator=generator)
        j = j + (j >= i).long()  # uniform over j ≠ i
        overlaps = (states[i] * states[j]).sum(dim=1).double()
        centred = states.double() - states.double().mean(dim=0)
        covariance = centred.T @ centred / vocab
        spectrum = torch.linalg.eigvalsh(covariance).clamp_min(0)
        participation = float(spectrum.sum() ** 2 / (spectrum**2).sum())
    mean_sq = float((overlaps**2).mean())
    crowded = mean_sq >= CROWDING_BOUNDARY
    return GeometryClass(
        model=name,
        vocab_size=int(weight.shape[0]),
        hidden_size=dim,
        pairs=pairs,
        seed=seed,
        mean_overlap=float(overlaps.mean()),
        mean_squared_overlap=mean_sq,
        crowding=dim * mean_sq,
        effective_dimension=participation,
        effective_dimension_fraction=participation / dim,
        geometry_class="A" if crowded else "B",
        boundary=CROWDING_BOUNDARY,
        lora_sufficient_predicted=not crowded,
    )
