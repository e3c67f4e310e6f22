"""Stored single-token runs reproduce: the fact machinery changed nothing a built-in context sees.

A run stored in results/ (made before facts existed) is run again from its own config.json on the
real SmolLM2, and the new trajectory must match the stored one row by row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phantomlens.settings import RunConfig
from phantomlens.train import finetune

ROOT = Path(__file__).resolve().parents[1]
STORED = ROOT / "results" / "phantoms" / "smollm2-lora-automobile-0.001"
COLUMNS = ["margin", "loss", "phi", "signal", "drag", "p_target", "purity", "entropy", "readout_1"]


@pytest.mark.integration
def test_a_stored_builtin_run_reproduces(tmp_path):
    import torch

    torch.set_num_threads(2)
    stored_config = json.loads((STORED / "config.json").read_text())
    stored_config.pop("context_resolved")
    result = finetune(RunConfig.from_dict(stored_config), progress=False)
    stored = pd.read_parquet(STORED / "trajectory.parquet")
    summary = json.loads((STORED / "summary.json").read_text())
    assert len(result.trajectory) == len(stored)
    for column in COLUMNS:
        # Same machine class, same seed; the tolerance covers float32 reduction order (threads,
        # library versions), which drifts by up to ~2e-4 relative over 50 steps.
        np.testing.assert_allclose(result.trajectory[column], stored[column], rtol=1e-3, atol=5e-5)
    assert result.summary.outcome == summary["outcome"]
    assert result.summary.flip_step == summary["flip_step"]
