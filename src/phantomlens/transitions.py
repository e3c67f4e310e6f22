"""Catapult-like jumps in Φ, the phantom test, jump-size prediction and run outcomes.

See docs/method.md, "Jumps, the phantom verdict and the symmetry-breaking check" and "Run outcomes".

Everything here works on a recorded trajectory (the DataFrame of a run) and its summary; nothing
touches a model. The decomposition ΔΦ = R + Γ + X was recorded at every step by the runner, so a
jump's verdict is read off its row(s).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from phantomlens.settings import AnalysisConfig

__all__ = ["AnalysisConfig", "Jump", "analyze", "detect_jumps", "summary_fields"]


@dataclass
class Jump:
    """One catapult-like jump in Φ, with its decomposition and verdicts."""

    step_from: int
    step: int  # the row after the jump
    window: int
    delta_phi: float
    sign: int
    z_score: float
    margin_before: float
    margin_after: float
    margin_velocity: float  # |Δm| per step across the jump (logits/step)
    readout: float  # R
    geometric: float  # Γ
    cross: float  # X
    readout_fraction: float  # R / ΔΦ
    phantom: bool
    predicted_delta_phi: float  # from the margins alone: two-token softmax × overlap damping
    prediction_error: float  # (predicted − observed) / |observed|
    predicted_delta_phi_pair: float  # the same, weighted by the pair's probability mass
    prediction_error_pair: float
    delta_overlap: float  # ΔG_cn across the jump
    displacement_target: float  # ‖Δê_c‖ across the jump
    displacement_competitor: float
    overlap_change_ratio: float  # |ΔG_cn| per unit LR here / its median before (nan if frozen)
    displacement_ratio: float  # max ‖Δê‖ per unit LR here / its median before (nan if frozen)
    symmetry_breaking: bool

    def to_dict(self) -> dict:
        return asdict(self)


def robust_z(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Modified z-scores (Iglewicz & Hoaglin): (x − median) / (1.4826 · MAD)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.full_like(values, np.nan), math.nan, math.nan
    median = float(np.median(finite))
    mad = float(np.median(np.abs(finite - median)))
    scale = max(1.4826 * mad, 1e-12)
    return (values - median) / scale, median, scale


def _two_token_signal(margin: float) -> float:
    return math.tanh(margin / 2.0)  # p_c − p_n when the pair holds all the mass


def detect_jumps(trajectory: pd.DataFrame, config: AnalysisConfig | None = None) -> list[Jump]:
    """Catapult-like jumps: a step (or a two-step window) whose ΔΦ is large absolutely, large
    against the run's typical step (robust z), and sudden (most of the local change)."""
    config = config or AnalysisConfig()
    t = trajectory.reset_index(drop=True)
    if len(t) < 3:
        return []
    changes = np.diff(t["phi"].to_numpy(dtype=float))  # changes[i] = Φ[i+1] − Φ[i]
    magnitudes = np.abs(changes)
    _, median, scale = robust_z(magnitudes)
    if not math.isfinite(scale):
        return []
    candidates = []  # (window, -|ΔΦ|, first change index, z)
    for window in range(1, config.jump_max_window + 1):
        for i in range(len(changes) - window + 1):
            segment = changes[i : i + window]
            if window > 1 and len(set(np.sign(segment))) != 1:
                continue  # a jump goes one way
            total = float(segment.sum())
            # `window` ordinary steps add `window` medians; only what exceeds that counts.
            z = (abs(total) - window * median) / (math.sqrt(window) * scale)
            lo, hi = max(0, i - config.jump_context), min(len(changes), i + window + config.jump_context)
            local = float(np.nansum(magnitudes[lo:hi]))
            share = abs(total) / local if local > 0 else 0.0
            if (
                abs(total) >= config.jump_min_abs
                and z >= config.jump_min_z
                and share >= config.jump_min_share
            ):
                candidates.append((window, -abs(total), i, z))
    taken = np.zeros(len(changes), dtype=bool)
    chosen = []
    for window, _, i, z in sorted(candidates):  # single steps first, largest first
        if not taken[i : i + window].any():
            taken[i : i + window] = True
            chosen.append((i, i + window, z))
    return [_describe(t, start, stop, z, config) for start, stop, z in sorted(chosen)]


def _describe(t: pd.DataFrame, start: int, end: int, zscore: float, config: AnalysisConfig) -> Jump:
    before, after = t.iloc[start], t.iloc[end]
    window = end - start
    lag = f"_{window}"
    delta = float(after["phi"] - before["phi"])
    readout = float(after["readout" + lag])
    geometric = float(after["geometric" + lag])
    cross = float(after["cross" + lag])
    m0, m1 = float(before["margin"]), float(after["margin"])
    damping_before = 1.0 - float(before["overlap_tc"]) ** 2
    damping_after = 1.0 - float(after["overlap_tc"]) ** 2
    predicted = damping_after * _two_token_signal(m1) - damping_before * _two_token_signal(m0)
    pair0 = float(before["p_target"] + before["p_competitor"])
    pair1 = float(after["p_target"] + after["p_competitor"])
    predicted_pair = pair1 * damping_after * _two_token_signal(
        m1
    ) - pair0 * damping_before * _two_token_signal(m0)
    overlap_change = float(after["overlap_tc"] - before["overlap_tc"])
    disp_c = float(t["disp_target"].iloc[start + 1 : end + 1].sum())
    disp_n = float(t["disp_competitor"].iloc[start + 1 : end + 1].sum())
    overlap_ratio, displacement_ratio = _geometry_ratios(t, start, end, overlap_change, max(disp_c, disp_n))
    symmetry = any(
        math.isfinite(r) and r > config.symmetry_ratio for r in (overlap_ratio, displacement_ratio)
    )
    return Jump(
        step_from=int(before["step"]),
        step=int(after["step"]),
        window=window,
        delta_phi=delta,
        sign=1 if delta > 0 else -1,
        z_score=zscore,
        margin_before=m0,
        margin_after=m1,
        margin_velocity=abs(m1 - m0) / window,
        readout=readout,
        geometric=geometric,
        cross=cross,
        readout_fraction=readout / delta if delta else math.nan,
        phantom=abs(readout) >= config.phantom_fraction * abs(delta),
        predicted_delta_phi=predicted,
        prediction_error=(predicted - delta) / abs(delta) if delta else math.nan,
        predicted_delta_phi_pair=predicted_pair,
        prediction_error_pair=(predicted_pair - delta) / abs(delta) if delta else math.nan,
        delta_overlap=overlap_change,
        displacement_target=disp_c,
        displacement_competitor=disp_n,
        overlap_change_ratio=overlap_ratio,
        displacement_ratio=displacement_ratio,
        symmetry_breaking=symmetry,
    )


def _geometry_ratios(
    t: pd.DataFrame, start: int, end: int, overlap_change: float, displacement: float
) -> tuple[float, float]:
    """How fast G_cn and the token states move at the jump, per unit learning rate, relative to
    their median speed over the steps before it.

    Per unit LR, because an optimiser moves the embeddings in proportion to the LR it applies: a
    jump near the schedule's peak would otherwise look fast merely for its LR. Before the jump,
    because after it the loss converges, the gradients vanish and Adam's steps shrink, so a
    converged model's stillness is no yardstick for a learning one. (A jump at the first
    step has no such history and is compared with all other steps.) The change between rows
    t−1 and t is made by the update at step t−1, with lr[t−1].
    """
    lr = t["lr"].to_numpy(dtype=float)
    applied = np.concatenate([[math.nan], lr[:-1]])  # the LR that produced row t from row t−1
    before = np.zeros(len(t), dtype=bool)
    before[1 : start + 1] = True  # rows reached by the updates before the jump
    if before.sum() < 1:  # a jump at the very first step: compare with everything else instead
        before = np.ones(len(t), dtype=bool)
        before[:1] = False
        before[start + 1 : end + 1] = False
    usable = before & np.isfinite(applied) & (applied > 0)
    overlap_speed = np.abs(np.diff(t["overlap_tc"].to_numpy(dtype=float), prepend=math.nan)) / applied
    disp = np.maximum(t["disp_target"].to_numpy(dtype=float), t["disp_competitor"].to_numpy(dtype=float))
    disp_speed = disp / applied
    lr_here = float(np.nansum(applied[start + 1 : end + 1]))

    def ratio(here: float, elsewhere: np.ndarray) -> float:
        elsewhere = elsewhere[np.isfinite(elsewhere)]
        if here == 0 and (elsewhere.size == 0 or np.all(elsewhere == 0)):
            return math.nan  # frozen geometry: nothing moves anywhere
        typical = float(np.median(elsewhere)) if elsewhere.size else math.nan
        if not lr_here > 0 or not typical > 0:
            return math.inf if here > 0 else math.nan
        return (here / lr_here) / typical

    return ratio(abs(overlap_change), overlap_speed[usable]), ratio(displacement, disp_speed[usable])


@dataclass
class Outcome:
    outcome: str  # success | kinematic | structural | diverged
    silent: bool  # no flip at the end although the loss fell by silent_loss_drop
    loss_drop_fraction: float
    drag_change: float  # D_end − D_0
    signal_max: float
    signal_end: float


def classify_outcome(
    trajectory: pd.DataFrame, summary: dict, config: AnalysisConfig | None = None
) -> Outcome:
    """success / kinematic / structural / diverged, and the silent flag (docs/method.md, 'Run outcomes')."""
    config = config or AnalysisConfig()
    finite = trajectory[np.isfinite(trajectory["loss"].to_numpy(dtype=float))]
    first, last = finite.iloc[0], finite.iloc[-1]
    loss_drop = float((first["loss"] - last["loss"]) / first["loss"]) if first["loss"] > 0 else 0.0
    drag_change = float(last["drag"] - first["drag"])
    if summary["status"] == "diverged":
        outcome = "diverged"
    elif summary["flipped_at_end"]:
        outcome = "success"
    elif drag_change < -config.drag_worsening:
        outcome = "structural"  # the bulk pulled the score towards the competitor as training went on
    else:
        outcome = "kinematic"  # the geometry did not work against it; the signal never got there
    silent = outcome in ("kinematic", "structural") and loss_drop >= config.silent_loss_drop
    return Outcome(
        outcome=outcome,
        silent=silent,
        loss_drop_fraction=loss_drop,
        drag_change=drag_change,
        signal_max=float(finite["signal"].max()),
        signal_end=float(last["signal"]),
    )


def frozen_geometry_check(trajectory: pd.DataFrame, summary: dict) -> dict:
    """When the recorded embedding hashes say the embeddings never changed, Γ and X must be exactly 0."""
    unchanged = summary["embedding_sha256_start"] == summary["embedding_sha256_end"]
    rows = trajectory.iloc[1:]
    exact = bool(
        ((rows["geometric_1"] == 0) & (rows["cross_1"] == 0)).all()
        and ((rows["geometric_2"].fillna(0) == 0) & (rows["cross_2"].fillna(0) == 0)).all()
    )
    return {
        "embeddings_unchanged": unchanged,
        "embedding_sha256": summary["embedding_sha256_start"],
        "geometric_and_cross_exactly_zero": exact,
        "consistent": (exact if unchanged else True),
    }


def analyze(trajectory: pd.DataFrame, summary: dict, config: AnalysisConfig | None = None) -> dict:
    """The full transitions analysis of one run, as a JSON-ready dict (the contents of events.json)."""
    config = config or AnalysisConfig()
    jumps = detect_jumps(trajectory, config)
    outcome = classify_outcome(trajectory, summary, config)
    frozen = frozen_geometry_check(trajectory, summary)
    if frozen["embeddings_unchanged"] and not frozen["geometric_and_cross_exactly_zero"]:
        raise AssertionError(
            "embedding hashes are unchanged but the recorded geometric/cross terms are not exactly 0"
        )
    errors = [abs(j.prediction_error) for j in jumps if math.isfinite(j.prediction_error)]
    return {
        "outcome": outcome.outcome,
        "silent": outcome.silent,
        "outcome_detail": asdict(outcome),
        "n_jumps": len(jumps),
        "n_phantom_jumps": sum(j.phantom for j in jumps),
        "n_symmetry_breaking_jumps": sum(j.symmetry_breaking for j in jumps),
        "median_abs_prediction_error": float(np.median(errors)) if errors else None,
        "frozen_geometry": frozen,
        "jumps": [j.to_dict() for j in jumps],
        "thresholds": config.to_dict(),
    }


def summary_fields(events: dict) -> dict:
    """What a run's summary.json carries from its analysis."""
    return {
        "outcome": events["outcome"],
        "silent": events["silent"],
        "n_jumps": events["n_jumps"],
        "n_phantom_jumps": events["n_phantom_jumps"],
        "analysis_thresholds": events["thresholds"],
    }
