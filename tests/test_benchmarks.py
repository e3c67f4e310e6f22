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
