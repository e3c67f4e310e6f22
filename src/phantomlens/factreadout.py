"""The readout of N facts at once, batched and kept on the device until the run ends.

For each fact f the readout of docs/method.md is taken at its branch position, with c = a_k* and
n = b_k*: Φ, signal and drag from the overlap columns G_·c and G_·n (one matrix product for all
2N columns), ranks, fidelities, the ΔΦ = R + Γ + X decomposition at lags 1 and 2, and the
displacement of the pair's token states. Nothing here reads a value back to the host: each step
appends one [N, F] tensor, and ``frame()`` moves them all at once when the run is over. Users
train on GPUs, where a host synchronisation per step costs more than the readout itself.

Purity and entropy need eigenvalues. Per step only the top-k Gram matrix √p G √p is formed
([N, k, k], k ≤ ``FACT_SPECTRAL_TOPK``), and all of a run's eigenvalues are computed in one batched
call at the end. Tokens beyond the ``spectral_mass`` cut are masked rather than dropped, so the
shapes never depend on the data (no synchronisation to learn k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from phantomlens.settings import ReadoutConfig

#: The largest k of a fact's top-k spectrum in a fact-set run (single-context runs allow 1024):
#: N eigenproblems per step must stay cheap next to the training step.
FACT_SPECTRAL_TOPK = 64

#: Per-fact columns, in the order of the per-step tensor.
COLUMNS = (
    "loss", "margin", "logp_target", "logp_competitor",
    "p_target", "p_competitor", "margin_branch", "rank_target", "rank_competitor", "loss_branch",
    "phi", "signal", "drag", "overlap_tc", "fidelity_target", "fidelity_competitor",
    "topk", "topk_mass",
    "dphi_1", "readout_1", "geometric_1", "cross_1", "dphi_2", "readout_2", "geometric_2", "cross_2",
    "disp_target", "disp_competitor",
)  # fmt: skip


def overlap_columns_batched(
    unembedding: torch.Tensor, target_ids: torch.Tensor, competitor_ids: torch.Tensor, center: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """G_·c and G_·n for every fact, float64 [N, V] each, from one product with U."""
    weight = unembedding.detach().float()
    probes = torch.cat([weight[target_ids], weight[competitor_ids]])  # [2N, d]
    if center:
        mean = weight.mean(dim=0)
        dots = torch.nn.functional.linear(weight, torch.cat([probes, mean[None]])).double()  # [V, 2N+1]
        mean64 = mean.double()
        mm = mean64 @ mean64
        dot_mean = dots[:, -1:]
        dots = dots[:, :-1] - dot_mean - (probes.double() @ mean64)[None, :] + mm
        sq_norms = torch.linalg.vector_norm(weight, dim=1).double() ** 2 - 2 * dot_mean[:, 0] + mm
    else:
        dots = torch.nn.functional.linear(weight, probes).double()  # [V, 2N]
        sq_norms = torch.linalg.vector_norm(weight, dim=1).double() ** 2
    norms = sq_norms.clamp_min(1e-24).sqrt()
    ids = torch.cat([target_ids, competitor_ids])
    overlaps = (dots / (norms[:, None] * norms[ids][None, :])).T  # [2N, V]
    n = len(target_ids)
    g_c, g_n = overlaps[:n].clone(), overlaps[n:].clone()
    rows = torch.arange(n, device=g_c.device)
    # Exact by definition, as in the single-context readout (fp32 products are ~1e-7 off).
    g_c[rows, target_ids] = 1.0
    g_n[rows, competitor_ids] = 1.0
    g_n[rows, target_ids] = g_c[rows, competitor_ids]
    return g_c, g_n


def rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_v a[n, v]·b[n, v] for each row n, as one batched matrix product."""
    return torch.bmm(a[:, None, :], b[:, :, None])[:, 0, 0]


@dataclass
class FactState:
    """What the decomposition needs of one step's readout, on the device."""

    p: torch.Tensor  # [N, V] float64
    weight: torch.Tensor  # [N, V] float64, G_ic² − G_in²
    phi: torch.Tensor  # [N]
    states: torch.Tensor  # [N, 2, d] float32: ê_c and ê_n


class FactReadout:
    """Per-step readouts of N facts (``observe``), recorded as rows at the end (``frame``)."""

    def __init__(
        self,
        unembedding: torch.Tensor,
        target_ids: torch.Tensor,
        competitor_ids: torch.Tensor,
        config: ReadoutConfig,
    ) -> None:
        self.unembedding = unembedding
        self.target_ids, self.competitor_ids = target_ids, competitor_ids
        self.config = config
        self.topk = min(config.spectral_topk, FACT_SPECTRAL_TOPK, unembedding.shape[0])
        self._cached: tuple | None = None
        self.history: list[FactState] = []
        self.values: list[torch.Tensor] = []  # one [N, len(COLUMNS)] float64 tensor per step
        self.grams: list[torch.Tensor] = []  # one [N, k, k] float32 tensor per step
        self.steps: list[int] = []
        self.lrs: list[float] = []

    def _overlaps(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(G_·c, G_·c², G_·n², w = G_·c² − G_·n²): recomputed while U trains, computed once while it
        is frozen (LoRA), so that a frozen geometry's w is the very same tensor at every step."""
        u = self.unembedding
        if u.requires_grad or self._cached is None or self._cached[0] != u._version:
            g_c, g_n = overlap_columns_batched(u, self.target_ids, self.competitor_ids, self.config.center)
            g_c2, g_n2 = g_c**2, g_n**2
            self._cached = (u._version, g_c, g_c2, g_n2, g_c2 - g_n2)
        return self._cached[1:]

    def _token_states(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.unembedding.detach()[ids].float()
        if self.config.center:
            rows = rows - self.unembedding.detach().float().mean(dim=0)
        return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def record(self, step: int, lr: float, branch_logits: torch.Tensor, sequence: dict) -> None:
        """Add step ``step``: the branch logits [N, V] and the sequence terms (``loss``,
        ``logp_target``, ``logp_competitor``, each [N]) of the same forward pass."""
        with torch.no_grad():
            values, state, gram = self._readout(branch_logits.double(), sequence)
        self.values.append(values)
        if gram is not None:
            self.grams.append(gram)
        self.steps.append(step)
        self.lrs.append(lr)
        self.history = [*self.history[-1:], state]

    def _readout(self, logits: torch.Tensor, sequence: dict):
        c, n = self.target_ids[:, None], self.competitor_ids[:, None]
        log_p = torch.log_softmax(logits, dim=-1)
        p = log_p.exp()
        g_c, g_c2, g_n2, weight = self._overlaps()
        # Row-wise dot products (batched matrix products): no [N, V] temporaries per quantity.
        fidelity_c, fidelity_n, phi = rowdot(p, g_c2), rowdot(p, g_n2), rowdot(p, weight)
        p_c, p_n = p.gather(1, c)[:, 0], p.gather(1, n)[:, 0]
        pair = p_c * weight.gather(1, c)[:, 0] + p_n * weight.gather(1, n)[:, 0]
        overlap = g_c.gather(1, n)[:, 0]
        z_c, z_n = logits.gather(1, c), logits.gather(1, n)
        states = torch.stack(
            [self._token_states(self.target_ids), self._token_states(self.competitor_ids)], 1
        )
        state = FactState(p, weight, phi, states)
        topk, mass, gram = self._spectrum(p)
        columns = [
            sequence["loss"].detach().double(),
            sequence["logp_target"] - sequence["logp_competitor"],
            sequence["logp_target"],
            sequence["logp_competitor"],
            p_c,
            p_n,
            (z_c - z_n)[:, 0],
            (logits > z_c).sum(1).double() + 1,
            (logits > z_n).sum(1).double() + 1,
            -log_p.gather(1, c)[:, 0],
            phi,
            (p_c - p_n) * (1 - overlap**2),
            phi - pair,  # the drag: Φ minus the pair's own terms
            overlap,
            fidelity_c,
            fidelity_n,
            topk,
            mass,
            *self._decomposition(state),
        ]
        return torch.stack([column.double() for column in columns], 1), state, gram

    def _decomposition(self, now: FactState) -> list[torch.Tensor]:
        """R = p·w′ − Φ′, Γ = p′·w − Φ′ and X = ΔΦ − R − Γ against the readout ′ one and two steps
        back; with a frozen geometry (w is w′) Γ and X are exactly 0 and R is ΔΦ."""
        out = []
        for lag in (1, 2):
            before = self.history[-lag] if len(self.history) >= lag else None
            if before is None:
                out += [torch.full_like(now.phi, math.nan)] * 4
                continue
            dphi = now.phi - before.phi
            if now.weight is before.weight:
                zero = torch.zeros_like(dphi)
                out += [dphi, dphi, zero, zero]
                continue
            readout = rowdot(now.p, before.weight) - before.phi
            geometric = rowdot(before.p, now.weight) - before.phi
            out += [dphi, readout, geometric, dphi - readout - geometric]
        previous = self.history[-1] if self.history else None
        if previous is None:
            return [*out, torch.full_like(now.phi, math.nan), torch.full_like(now.phi, math.nan)]
        moved = (now.states - previous.states).norm(dim=-1)  # [N, 2]
        return [*out, moved[:, 0], moved[:, 1]]

    def _spectrum(self, p: torch.Tensor):
        """Top-k mass, k and the Gram matrix √p G √p [N, k, k] (eigenvalues come at the end)."""
        if self.topk == 0:
            nan = torch.full((p.shape[0],), math.nan, dtype=p.dtype, device=p.device)
            return torch.zeros_like(nan), nan, None
        top_p, top_ids = torch.topk(p, self.topk, dim=1)
        before = top_p.cumsum(1) - top_p  # mass of the tokens ranked above each one
        keep = before < self.config.spectral_mass  # as the single-context readout: up to the cut
        kept = torch.where(keep, top_p, 0.0)
        mass = kept.sum(1)
        weights = (kept / mass[:, None]).float().sqrt()
        states = self._token_states(top_ids)  # [N, k, d]
        weighted = weights[..., None] * states
        return keep.sum(1).double(), mass, weighted @ weighted.transpose(1, 2)

    def frame(self, names: list[str]):
        """The trajectory: one row per step per fact (this is where values reach the host)."""
        import numpy as np
        import pandas as pd

        values = torch.stack(self.values).cpu().numpy()  # [T, N, F]
        steps, facts = values.shape[0], values.shape[1]
        table = pd.DataFrame(values.reshape(steps * facts, -1), columns=list(COLUMNS))
        table.insert(0, "fact", np.tile(np.asarray(names, dtype=object), steps))
        table.insert(0, "lr", np.repeat(np.asarray(self.lrs, dtype=float), facts))
        table.insert(0, "step", np.repeat(np.asarray(self.steps, dtype=np.int64), facts))
        purity, entropy = self._spectra(steps, facts)
        table["purity"], table["entropy"] = purity, entropy
        for column in ("rank_target", "rank_competitor", "topk"):
            table[column] = table[column].astype(np.int64)
        table["geometry"] = "centred" if self.config.center else "raw"
        return table

    def _spectra(self, steps: int, facts: int):
        import numpy as np

        if not self.grams:
            return np.full(steps * facts, np.nan), np.full(steps * facts, np.nan)
        grams = torch.stack(self.grams).flatten(0, 1)  # [T·N, k, k]
        finite = torch.isfinite(grams).flatten(1).all(1)
        eigenvalues = torch.linalg.eigvalsh(torch.where(finite[:, None, None], grams, 0.0)).double()
        eigenvalues = eigenvalues.clamp_min(0.0)
        purity = (eigenvalues**2).sum(1)
        logs = torch.where(eigenvalues > 1e-12, eigenvalues.clamp_min(1e-300).log(), 0.0)
        entropy = -(eigenvalues * logs).sum(1)
        nan = torch.tensor(math.nan, dtype=torch.float64, device=purity.device)
        purity, entropy = torch.where(finite, purity, nan), torch.where(finite, entropy, nan)
        return purity.cpu().numpy(), entropy.cpu().numpy()
