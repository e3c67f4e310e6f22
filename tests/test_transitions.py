"""Jump detection, the phantom decomposition, jump-size prediction and outcomes on known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from phantomlens.transitions import (
    AnalysisConfig,
    analyze,
    classify_outcome,
    detect_jumps,
    frozen_geometry_check,
)


def synthetic(
    velocity: float,
    steps: int = 30,
    margin0: float = -6.0,
    overlap: float = 0.6,
    geometric_kick: dict[int, float] | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """A two-token world: the margin moves linearly; p = two-token softmax; Φ = S exactly.

    ``geometric_kick`` adds a geometric change of Φ at given rows (the embeddings moving).
    """
    rng = np.random.default_rng(seed)
    margins = margin0 + velocity * np.arange(steps + 1) + noise * rng.standard_normal(steps + 1)
    p_c = 1 / (1 + np.exp(-margins))
    p_n = 1 - p_c
    damping = 1 - overlap**2
    readout_phi = (p_c - p_n) * damping
    geometric = np.zeros(steps + 1)
    disp = np.full(steps + 1, 1e-3)
    overlaps = np.full(steps + 1, overlap)
    for row, kick in (geometric_kick or {}).items():
        geometric[row] = kick
        disp[row] = 0.2
        overlaps[row:] -= 0.1
    phi = readout_phi + np.cumsum(geometric)
    rows = []
    for i in range(steps + 1):
        row = {
            "step": i,
            "lr": 1e-3 if i < steps else math.nan,
            "phi": phi[i],
            "margin": margins[i],
            "p_target": p_c[i],
            "p_competitor": p_n[i],
            "overlap_tc": overlaps[i],
            "loss": -math.log(p_c[i]),
            "signal": readout_phi[i],
            "drag": 0.0,
            "disp_target": disp[i] if i else math.nan,
            "disp_competitor": disp[i] if i else math.nan,
        }
        for lag in (1, 2):
            if i >= lag:
                row[f"dphi_{lag}"] = phi[i] - phi[i - lag]
                row[f"readout_{lag}"] = readout_phi[i] - readout_phi[i - lag]
                row[f"geometric_{lag}"] = geometric[i - lag + 1 : i + 1].sum()
                row[f"cross_{lag}"] = 0.0
            else:
                for key in ("dphi", "readout", "geometric", "cross"):
                    row[f"{key}_{lag}"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def test_fast_margin_gives_one_phantom_jump_with_exact_prediction():
    t = synthetic(velocity=2.0, margin0=-7.0)  # crosses zero between rows 3 and 4
    jumps = detect_jumps(t)
    assert len(jumps) >= 1
    main = max(jumps, key=lambda j: abs(j.delta_phi))
    assert main.step_from <= 3 < main.step
    assert main.sign == 1 and main.phantom
    assert main.geometric == 0 and main.cross == 0
    assert main.margin_velocity == pytest.approx(2.0)
    # Two-token world: the margin-only prediction is exact.
    assert abs(main.prediction_error) < 1e-9
    assert abs(main.prediction_error_pair) < 1e-9


def test_slow_margin_has_no_jump():
    t = synthetic(velocity=0.2, steps=60)  # the sigmoid is crossed over many steps
    assert detect_jumps(t) == []


def test_geometric_jump_is_not_a_phantom_and_flags_symmetry_breaking():
    t = synthetic(velocity=0.05, margin0=-8, geometric_kick={15: 0.3})
    jumps = detect_jumps(t)
    assert len(jumps) == 1
    jump = jumps[0]
    assert jump.step == 15 and not jump.phantom
    assert jump.geometric == pytest.approx(0.3)
    assert jump.readout + jump.geometric + jump.cross == pytest.approx(jump.delta_phi)
    assert jump.symmetry_breaking and jump.displacement_ratio > 3
    assert abs(jump.prediction_error) > 0.5  # the margin cannot explain a geometric jump


def test_two_step_window_is_found_when_neither_step_alone_qualifies():
    t = synthetic(velocity=0.0, steps=30, margin0=-8)
    t["phi"] = 0.001 * np.sin(np.arange(31))
    t.loc[11:, "phi"] += 0.04
    t.loc[12:, "phi"] += 0.04
    for lag in (1, 2):
        t[f"dphi_{lag}"] = t["phi"].diff(lag)
        t[f"readout_{lag}"] = t[f"dphi_{lag}"]
    config = AnalysisConfig(jump_min_abs=0.05)
    jumps = detect_jumps(t, config)
    assert [(j.step_from, j.step, j.window) for j in jumps] == [(10, 12, 2)]
    assert detect_jumps(t, AnalysisConfig(jump_min_abs=0.05, jump_max_window=1)) == []


def test_thresholds_change_the_answer():
    t = synthetic(velocity=2.0, margin0=-7.0)
    assert detect_jumps(t, AnalysisConfig(jump_min_abs=2.0)) == []
    strict = AnalysisConfig(phantom_fraction=1.01)
    assert not any(j.phantom for j in detect_jumps(t, strict))


def summary_for(t: pd.DataFrame, status="completed", same_hash=True) -> dict:
    return {
        "status": status,
        "flipped_at_end": bool(t["margin"].iloc[-1] > 0) and status == "completed",
        "embedding_sha256_start": "a" * 64,
        "embedding_sha256_end": "a" * 64 if same_hash else "b" * 64,
    }


def test_outcomes_success_kinematic_structural_diverged_and_silent():
    flipping = synthetic(velocity=0.5)
    assert classify_outcome(flipping, summary_for(flipping)).outcome == "success"
    stuck = synthetic(velocity=0.02, margin0=-4)  # loss falls a little, never flips
    kin = classify_outcome(stuck, summary_for(stuck))
    assert kin.outcome == "kinematic" and kin.loss_drop_fraction > 0
    assert kin.silent == (kin.loss_drop_fraction >= 0.1)
    structural = stuck.copy()
    structural["drag"] = -0.002 * structural["step"]
    assert classify_outcome(structural, summary_for(structural)).outcome == "structural"
    assert classify_outcome(flipping, summary_for(flipping, status="diverged")).outcome == "diverged"
    silent = synthetic(velocity=0.1, margin0=-8, steps=30)
    result = classify_outcome(silent, summary_for(silent))
    assert result.outcome == "kinematic" and result.silent and result.loss_drop_fraction > 0.1


def test_frozen_geometry_is_checked_from_the_hashes():
    t = synthetic(velocity=2.0, margin0=-7)
    assert frozen_geometry_check(t, summary_for(t))["geometric_and_cross_exactly_zero"]
    broken = synthetic(velocity=0.05, margin0=-8, geometric_kick={15: 0.3})
    with pytest.raises(AssertionError, match="not exactly 0"):
        analyze(broken, summary_for(broken, same_hash=True))
    report = analyze(broken, summary_for(broken, same_hash=False))
    assert report["n_jumps"] == 1 and report["n_phantom_jumps"] == 0
    assert report["thresholds"]["phantom_fraction"] == 0.9


def test_geometry_speed_is_judged_per_unit_learning_rate():
    from phantomlens.session import schedule_factors

    t = synthetic(velocity=2.0, margin0=-9.0, steps=30)  # the jump lands near the LR peak
    lrs = np.array([*schedule_factors(30, "cosine", 0.1), math.nan]) * 1e-3
    t["lr"] = lrs
    applied = np.concatenate([[math.nan], lrs[:-1]])
    t["disp_target"] = t["disp_competitor"] = 50 * applied  # the embeddings move ∝ the LR, no faster
    t["overlap_tc"] = 0.6 - np.nancumsum(np.nan_to_num(applied)) * 2
    jump = max(detect_jumps(t), key=lambda j: abs(j.delta_phi))
    assert jump.displacement_ratio == pytest.approx(1.0, rel=1e-6)
    assert jump.overlap_change_ratio == pytest.approx(1.0, rel=1e-6)
    assert not jump.symmetry_breaking
