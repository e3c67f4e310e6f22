"""The baselines the benchmarks compare against, on a tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from conftest import make_tiny

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from critical_lr import range_test


def test_range_test_ramps_exponentially_and_suggests_the_steepest_descent():
    model, tokenizer = make_tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = range_test(model, tokenizer, "shame", "full", start=1e-6, end=1.0, steps=60)
    lrs = np.array(result["lrs"])
    assert np.allclose(np.diff(np.log(lrs)), np.log(1e6) / 59)  # one constant factor per step
    assert result["suggestion"] in result["lrs"]
    losses = np.array(result["losses"])
    index = result["lrs"].index(result["suggestion"])
    gradient = np.gradient(losses[10 : len(losses) - 5])
    assert gradient[index - 10] == gradient.min()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # ran on a copy


def test_stopping_rules_follow_their_definitions():
    import pandas as pd
    from early_stop import evaluate, flip_stop, plateau_stop

    margins = [-2, -1, 0.5, 1.2, 1.5, 1.1, 2.0, 3.0]
    assert flip_stop(margins, margin_safe=1.0, patience=3) == 5  # 1.2, 1.5, 1.1 end at index 5
    assert flip_stop(margins, margin_safe=5.0, patience=1) is None
    losses = [5.0, 4.0, 3.0, 2.9995, 2.9990, 2.9992, 1.0]
    # improvements under min_delta do not count: waits at indices 3, 4, 5 → stop at 5
    assert plateau_stop(losses, min_delta=1e-3, patience=3) == 5
    assert plateau_stop(losses, min_delta=0.0, patience=3) is None
    steps = len(margins)
    trajectory = pd.DataFrame(
        {"step": range(steps + 1), "margin": [*margins, 3.5], "loss": [5, 4, 3, 2.5, 2.2, 2.1, 2.1, 2.1, 2.1]}
    )
    result = evaluate(trajectory, steps, margin_safe=1.0, patience=3, min_delta=1e-3)
    assert result["flip_stop_steps"] == 6 and result["flip_retained_at_stop"]
    assert result["plateau_stop_steps"] == steps  # the plateau (index 6, 7) is too short to trigger
    assert result["saving"] == 1 - 6 / steps
