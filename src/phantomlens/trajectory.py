"""The per-step recorder: readouts become trajectory rows, with ΔΦ = R + Γ + X between steps.

Between two readouts (p, w) → (p', w'), where w_i = G_ic² − G_in² and Φ = p·w, the change splits
exactly into a readout part R = Δp·w (old geometry), a geometric part Γ = p·Δw (old probabilities)
and a cross term X = Δp·Δw (docs/method.md, "The phantom decomposition"). Rows carry it at lag 1
and lag 2, so the transitions analysis can judge one- and two-step jumps without the model.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from phantomlens.readout import (
    Readout,
    ReadoutState,
    SpectrumInput,
    readout_from_logits,
    spectrum_input,
    spectrum_of,
)
from phantomlens.settings import ReadoutConfig

DECOMPOSITION = ("dphi", "readout", "geometric", "cross")


def decompose(now: ReadoutState, before: ReadoutState | None) -> dict[str, float]:
    """ΔΦ = R + Γ + X between two readouts (NaN when there is no earlier readout)."""
    if before is None:
        return dict.fromkeys(DECOMPOSITION, math.nan)
    dp = now.p - before.p
    dw = now.weight - before.weight
    return {
        "dphi": float(now.p @ now.weight - before.p @ before.weight),
        "readout": float(dp @ before.weight),
        "geometric": float(before.p @ dw),
        "cross": float(dp @ dw),
    }


def displacement(now: ReadoutState, before: ReadoutState | None) -> tuple[float, float]:
    """‖Δê_c‖ and ‖Δê_n‖ between two readouts: how far the pair's token states moved."""
    if before is None:
        return math.nan, math.nan
    return (
        float((now.state_target - before.state_target).norm()),
        float((now.state_competitor - before.state_competitor).norm()),
    )


class Recorder:
    """Turns successive readouts into trajectory rows, with lag-1 and lag-2 changes."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.history: list[ReadoutState] = []

    def add(self, step: int, lr: float, readout: Readout, state: ReadoutState) -> dict:
        previous = self.history[-1] if self.history else None
        earlier = self.history[-2] if len(self.history) >= 2 else None
        row = {"step": step, "lr": lr, **readout.to_dict()}
        row.update({f"{k}_1": v for k, v in decompose(state, previous).items()})
        row.update({f"{k}_2": v for k, v in decompose(state, earlier).items()})
        row["disp_target"], row["disp_competitor"] = displacement(state, previous)
        self.rows.append(row)
        self.history = [*self.history[-1:], state]
        return row


@dataclass
class Pending:
    """A readout whose top-k spectrum may still be computing in the worker thread."""

    readout: Readout
    state: ReadoutState
    spectrum: tuple[SpectrumInput, Future] | None


class Instrument:
    """Per-step readouts of one context, recorded as trajectory rows.

    ``observe(logits)`` reads Φ, signal, drag and the rest at once and starts the top-k spectrum
    (a d×d eigensolve) in a worker thread, on rows copied out of U, so the caller may run backward
    and the optimiser step meanwhile; ``record(pending, step, lr)`` waits for it and adds the row.
    """

    def __init__(
        self, unembedding: torch.Tensor, target_id: int, competitor_id: int, config: ReadoutConfig
    ) -> None:
        self.unembedding = unembedding
        self.target_id, self.competitor_id = target_id, competitor_id
        self.config = config
        self.recorder = Recorder()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phantomlens-spectrum")

    @property
    def rows(self) -> list[dict]:
        return self.recorder.rows

    def observe(self, logits: torch.Tensor) -> Pending:
        readout, state = readout_from_logits(
            logits,
            self.unembedding,
            self.target_id,
            self.competitor_id,
            center=self.config.center,
            with_spectrum=False,
        )
        if self.config.spectral_topk == 0 or not bool(torch.isfinite(state.p).all()):
            return Pending(readout, state, None)
        inputs = spectrum_input(
            self.unembedding,
            state.p,
            self.config.center,
            self.config.spectral_mass,
            self.config.spectral_topk,
        )
        return Pending(readout, state, (inputs, self._pool.submit(spectrum_of, inputs)))

    def record(self, pending: Pending, step: int, lr: float) -> dict:
        readout = pending.readout
        if pending.spectrum is not None:
            inputs, future = pending.spectrum
            purity, entropy = future.result()
            readout = replace(
                readout, purity=purity, entropy=entropy, topk=inputs.k, topk_mass=inputs.covered
            )
        return self.recorder.add(step, lr, readout, pending.state)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Instrument:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
