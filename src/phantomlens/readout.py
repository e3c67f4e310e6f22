"""The density-matrix readout: Φ = signal + drag, purity and entropy (docs/method.md, 'The density matrix').

Token states are the unit-normalised rows of the output embedding (unembedding) matrix U,
ê_i = u_i/‖u_i‖ ("raw") or (u_i − ū)/‖u_i − ū‖ ("centred"). With p = softmax(logits), the
predicted distribution as a mixed state is ρ = Σ_i p_i |ê_i⟩⟨ê_i|. We never build ρ or the V×V
overlap matrix: Φ, signal and drag need only the overlap columns G_·c and G_·n, two matrix-vector
products (O(V·d)). Purity and von Neumann entropy use the top-k tokens, through the k×k matrix
√p G √p (or the d×d ρ_k when k > d), whose nonzero eigenvalues are those of ρ_k.

These formulas are phantomlens's own definitions, built to satisfy what the paper's abstract
states; the paper's own equations are not available to us.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass, fields

import torch

from phantomlens.forward import evaluation, last_token_logits, output_embedding, token_states
from phantomlens.settings import SPECTRAL_MASS, SPECTRAL_TOPK


@dataclass(frozen=True)
class Readout:
    """What the instrument reads off one prediction of the next token after a context."""

    p_target: float  # probability of the correct token c
    p_competitor: float  # probability of the near-synonym competitor n
    margin: float  # logit(c) − logit(n); the flip is margin > 0
    rank_target: int  # 1 = top prediction
    rank_competitor: int
    loss: float  # cross-entropy −log p_c, the quantity fine-tuning minimises
    phi: float  # order parameter Φ = F_c − F_n = Σ_i p_i (G_ic² − G_in²)
    signal: float  # S = (p_c − p_n)(1 − G_cn²): commitment to c over n, damped by their overlap
    drag: float  # D = Σ_{i∉{c,n}} p_i (G_ic² − G_in²): the bulk's leak into the score
    overlap_tc: float  # G_cn, cosine of the target and competitor token states
    fidelity_target: float  # F_c = ⟨ê_c|ρ|ê_c⟩
    fidelity_competitor: float  # F_n = ⟨ê_n|ρ|ê_n⟩
    purity: float  # Tr ρ_k² over the top-k tokens (1 = a pure state)
    entropy: float  # von Neumann entropy −Tr ρ_k log ρ_k (nats) over the top-k tokens
    topk: int  # k tokens used for purity/entropy
    topk_mass: float  # probability mass those k tokens carry (ρ_k is renormalised to trace 1)
    geometry: str  # "raw" or "centred"

    @property
    def flipped(self) -> bool:
        return self.margin > 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Readout:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class ReadoutState:
    """The per-token vectors behind a readout, kept for the ΔΦ = R + Γ + X decomposition."""

    p: torch.Tensor  # float64 [V], the predicted distribution
    weight: torch.Tensor  # float64 [V], w_i = G_ic² − G_in²; Φ = p·w
    state_target: torch.Tensor  # float32 [d], ê_c
    state_competitor: torch.Tensor  # float32 [d], ê_n


def overlap_columns(
    unembedding: torch.Tensor, target_id: int, competitor_id: int, center: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """G_·c and G_·n as float64 [V] vectors, in O(V·d) without forming normalised rows.

    Cached only while ``unembedding`` is frozen (``requires_grad`` False, as under LoRA), and
    keyed on its in-place version counter too, so under LoRA they are computed once per run.
    """
    if unembedding.requires_grad:
        return _overlap_columns(unembedding, target_id, competitor_id, center)
    key = (id(unembedding), unembedding.data_ptr(), unembedding._version, center, target_id, competitor_id)
    hit = _overlap_cache.get(key)
    if hit is not None and hit[0]() is unembedding:
        return hit[1], hit[2]
    g_c, g_n = _overlap_columns(unembedding, target_id, competitor_id, center)
    _overlap_cache.clear()  # one entry: runs measure one context at a time
    _overlap_cache[key] = (weakref.ref(unembedding), g_c, g_n)
    return g_c, g_n


_overlap_cache: dict[tuple, tuple] = {}


def _overlap_columns(
    unembedding: torch.Tensor, target_id: int, competitor_id: int, center: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    weight = unembedding.detach().float()
    u_c, u_n = weight[target_id], weight[competitor_id]
    if center:
        mean = weight.mean(dim=0)
        # F.linear (U @ probesᵀ with probes as rows) takes MKL's fast path: ~4× faster than U @ P.
        dots = torch.nn.functional.linear(weight, torch.stack([u_c, u_n, mean])).double()  # [V, 3]
        mean64, uc64, un64 = mean.double(), u_c.double(), u_n.double()
        mm = mean64 @ mean64
        # (u_i − ū)·(u_j − ū) = u_i·u_j − u_i·ū − ū·u_j + ū·ū, so no centred copy of U is made.
        dot_c = dots[:, 0] - dots[:, 2] - mean64 @ uc64 + mm
        dot_n = dots[:, 1] - dots[:, 2] - mean64 @ un64 + mm
        sq_norms = torch.linalg.vector_norm(weight, dim=1).double() ** 2 - 2 * dots[:, 2] + mm
    else:
        dots = torch.nn.functional.linear(weight, torch.stack([u_c, u_n])).double()
        dot_c, dot_n = dots[:, 0], dots[:, 1]
        sq_norms = torch.linalg.vector_norm(weight, dim=1).double() ** 2
    norms = sq_norms.clamp_min(1e-24).sqrt()
    g_c = dot_c / (norms * norms[target_id])
    g_n = dot_n / (norms * norms[competitor_id])
    # Exact by definition; fp32 dot products would leave them ~1e-7 off and break Φ = S + D.
    g_c[target_id] = g_n[competitor_id] = 1.0
    g_n[target_id] = g_c[competitor_id]
    return g_c, g_n


@dataclass
class SpectrumInput:
    """The top-k part of ρ, copied out of U: A = √p_k Ê_k, so that AAᵀ = √p G √p and AᵀA = ρ_k."""

    weighted: torch.Tensor  # float32 [k, d]; a copy, so U may change while the spectrum is computed
    k: int
    covered: float  # probability mass of the k tokens (ρ_k is renormalised to trace 1)


def spectrum_input(
    unembedding: torch.Tensor,
    p: torch.Tensor,
    center: bool,
    mass: float = SPECTRAL_MASS,
    cap: int = SPECTRAL_TOPK,
) -> SpectrumInput:
    top_p, top_ids = torch.topk(p, min(cap, p.numel()))
    cumulative = top_p.cumsum(0)
    threshold = torch.tensor(mass, dtype=cumulative.dtype, device=cumulative.device)
    k = int(torch.searchsorted(cumulative, threshold).item()) + 1
    k = min(k, top_p.numel())
    pk, ids = top_p[:k], top_ids[:k]
    covered = float(pk.sum())
    # float32 is enough here (eigenvalues to ~1e-7) and keeps the per-step cost a few percent.
    pk = (pk / pk.sum()).float()
    states = token_states(unembedding.detach(), ids, center)  # [k, d]
    return SpectrumInput(pk.sqrt()[:, None] * states, k, covered)


def spectrum_of(inputs: SpectrumInput) -> tuple[float, float]:
    """(purity, von Neumann entropy) from the smaller of the k×k and d×d Gram matrices."""
    a = inputs.weighted
    matrix = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a  # same nonzero spectrum
    if not bool(torch.isfinite(matrix).all()):
        return math.nan, math.nan
    try:
        eigenvalues = torch.linalg.eigvalsh(matrix).double().clamp_min(0.0)
    except torch.linalg.LinAlgError:  # only seen on degenerate geometry from a diverging run
        return math.nan, math.nan
    positive = eigenvalues[eigenvalues > 1e-12]
    return float((eigenvalues**2).sum()), float(-(positive * positive.log()).sum())


def spectral(
    unembedding: torch.Tensor,
    p: torch.Tensor,
    center: bool,
    mass: float = SPECTRAL_MASS,
    cap: int = SPECTRAL_TOPK,
) -> tuple[float, float, int, float]:
    """Purity and von Neumann entropy of ρ_k over the top-k tokens: (purity, entropy, k, mass_k)."""
    inputs = spectrum_input(unembedding, p, center, mass, cap)
    purity, entropy = spectrum_of(inputs)
    return purity, entropy, inputs.k, inputs.covered


def readout_from_logits(
    logits: torch.Tensor,
    unembedding: torch.Tensor,
    target_id: int,
    competitor_id: int,
    *,
    center: bool = False,
    spectral_mass: float = SPECTRAL_MASS,
    spectral_topk: int = SPECTRAL_TOPK,
    with_spectrum: bool = True,
) -> tuple[Readout, ReadoutState]:
    """Compute the readout from next-token logits [V] and the output embedding matrix [V, d]."""
    logits = logits.detach().double()
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    g_c, g_n = overlap_columns(unembedding, target_id, competitor_id, center)
    weight = g_c**2 - g_n**2
    p_c, p_n = p[target_id], p[competitor_id]
    overlap = g_c[competitor_id]
    phi = torch.dot(p, weight)
    signal = (p_c - p_n) * (1.0 - overlap**2)
    bulk = torch.ones_like(p, dtype=torch.bool)
    bulk[[target_id, competitor_id]] = False
    drag = torch.dot(p[bulk], weight[bulk])  # summed on its own, so Φ = S + D is a real check
    fidelity_c, fidelity_n = torch.dot(p, g_c**2), torch.dot(p, g_n**2)
    z_c, z_n = logits[target_id], logits[competitor_id]
    if with_spectrum and bool(torch.isfinite(p).all()):
        purity, entropy, k, covered = spectral(unembedding, p, center, spectral_mass, spectral_topk)
    else:
        purity, entropy, k, covered = math.nan, math.nan, 0, math.nan
    readout = Readout(
        p_target=float(p_c),
        p_competitor=float(p_n),
        margin=float(z_c - z_n),
        rank_target=int((logits > z_c).sum()) + 1,
        rank_competitor=int((logits > z_n).sum()) + 1,
        loss=float(-log_p[target_id]) + 0.0,  # + 0.0: a certain target gives 0, not −0
        phi=float(phi),
        signal=float(signal),
        drag=float(drag),
        overlap_tc=float(overlap),
        fidelity_target=float(fidelity_c),
        fidelity_competitor=float(fidelity_n),
        purity=purity,
        entropy=entropy,
        topk=k,
        topk_mass=covered,
        geometry="centred" if center else "raw",
    )
    ids = torch.tensor([target_id, competitor_id], device=unembedding.device)
    states = token_states(unembedding.detach(), ids, center)
    return readout, ReadoutState(p=p, weight=weight, state_target=states[0], state_competitor=states[1])


def measure(
    model,
    tokenizer,
    context: str,
    target: str,
    competitor: str | None = None,
    *,
    center: bool = False,
) -> Readout:
    """Read the instrument on ``context`` for ``target`` vs ``competitor``, leaving the model as it was.

    Runs one forward pass under ``torch.no_grad`` in eval mode and restores the model's mode.
    ``competitor=None`` picks one by the documented rule (see ``phantomlens.contexts``).
    """
    from phantomlens.contexts import resolve

    spec = resolve(tokenizer, context, target, competitor, model=model)
    with evaluation(model):
        logits = last_token_logits(model, spec.input_ids)
        readout, _ = readout_from_logits(
            logits, output_embedding(model), spec.target_id, spec.competitor_id, center=center
        )
    return readout
