"""Instrumented runs on tiny models: protocol, recorded quantities, LoRA invariance, divergence, I/O."""

from __future__ import annotations

import itertools
import json
import math

import pandas as pd
import pytest
import torch
from tiny_models import make_tiny, tiny_pair

from phantomlens.errors import PhantomLensError
from phantomlens.session import embedding_sha256, schedule_factors
from phantomlens.settings import RunConfig
from phantomlens.train import finetune

TEXT = "She felt a deep sense of"

REQUIRED_COLUMNS = [
    "step",
    "lr",
    "loss",
    "p_target",
    "p_competitor",
    "margin",
    "rank_target",
    "rank_competitor",
    "phi",
    "signal",
    "drag",
    "overlap_tc",
    "purity",
    "entropy",
]


def run_tiny(arch="llama", **kwargs):
    model, tokenizer = make_tiny(arch)
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    settings = {
        "context": TEXT,
        "target": target,
        "competitor": competitor,
        "steps": 6,
        "lr": 1e-2,
        "progress": False,
        **kwargs,
    }
    return finetune(model=model, tokenizer=tokenizer, **settings), model


def test_schedule_shapes():
    cosine = schedule_factors(50, "cosine", 0.1)
    assert cosine[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert cosine[5] == 1.0 and all(a >= b for a, b in itertools.pairwise(cosine[5:]))
    assert 0 < cosine[-1] < 0.01
    assert schedule_factors(7, "constant") == [1.0] * 7
    assert schedule_factors(3, "cosine", 0.0)[0] == 1.0


@pytest.mark.parametrize("arch", ["llama", "llama-untied", "gpt2", "gpt_neox", "gemma3", "opt"])
def test_full_run_records_every_step(arch):
    result, _ = run_tiny(arch)
    t = result.trajectory
    assert list(t["step"]) == list(range(7))  # T readouts before updates + the final one
    assert set(REQUIRED_COLUMNS) <= set(t.columns)
    assert (t["phi"] - (t["signal"] + t["drag"])).abs().max() < 1e-12
    decomposed = t["readout_1"] + t["geometric_1"] + t["cross_1"]
    assert (t["dphi_1"] - decomposed).abs().max() < 1e-12
    assert t["loss"].iloc[-1] < t["loss"].iloc[0]
    assert result.summary.status == "completed"
    # Full fine-tuning moves the (tied or untied) output embedding.
    assert not result.summary.embeddings_unchanged


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "opt"])
def test_lora_keeps_embeddings_bit_identical(arch):
    result, model = run_tiny(arch, mode="lora", lr=5e-2)
    s = result.summary
    assert s.embeddings_unchanged and s.embedding_sha256_start == s.embedding_sha256_end
    assert embedding_sha256(model) == s.embedding_sha256_start
    t = result.trajectory.iloc[1:]
    # Same geometry at every step, so the geometric and cross parts vanish exactly, not nearly.
    assert (t["geometric_1"] == 0).all() and (t["cross_1"] == 0).all()
    assert (t["disp_target"] == 0).all() and (t["overlap_tc"] == t["overlap_tc"].iloc[0]).all()
    assert s.trainable_parameters < 10_000
    assert t["margin"].iloc[-1] != result.trajectory["margin"].iloc[0]


def test_sgd_constant_schedule_and_seed_are_applied():
    result, _ = run_tiny(optimizer="sgd", schedule="constant", lr=0.5)
    assert (result.trajectory["lr"].iloc[:-1] == 0.5).all()
    a, _ = run_tiny(mode="lora", seed=1)
    b, _ = run_tiny(mode="lora", seed=1)
    c, _ = run_tiny(mode="lora", seed=2)
    pd.testing.assert_frame_equal(a.trajectory, b.trajectory)
    assert not a.trajectory["margin"].equals(c.trajectory["margin"])


def test_huge_learning_rate_diverges_cleanly(tmp_path):
    result, _ = run_tiny(lr=1e9, steps=20, optimizer="sgd", schedule="constant", out=tmp_path / "run")
    s = result.summary
    assert s.status == "diverged" and s.diverged_step is not None
    assert s.status_reason
    assert not s.flipped_at_end
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["status"] == "diverged"
    assert math.isfinite(saved["loss_final"])  # the last finite readout, not NaN


def test_run_directory_contents(tmp_path):
    result, _ = run_tiny(out=tmp_path / "run")
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "trajectory.parquet",
        "summary.json",
        "trajectory.png",
        "events.json",
    }
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "status",
        "flipped",
        "flip_step",
        "margin_initial",
        "margin_final",
        "loss_initial",
        "loss_final",
        "embedding_sha256_start",
        "embedding_sha256_end",
        "config",
        "versions",
    ):
        assert key in summary
    table = pd.read_parquet(out / "trajectory.parquet")
    pd.testing.assert_frame_equal(table, result.trajectory)
    config = json.loads((out / "config.json").read_text())
    stored = RunConfig.from_dict({k: v for k, v in config.items() if k != "context_resolved"})
    assert stored == RunConfig.from_dict(result.summary.config) and stored.lr is not None
    assert (out / "trajectory.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(PhantomLensError, match="already exists"):
        run_tiny(out=out)


def test_failed_run_leaves_no_directory(tmp_path):
    model, tokenizer = make_tiny("llama")
    with pytest.raises(PhantomLensError):
        finetune(
            model=model,
            tokenizer=tokenizer,
            context=TEXT,
            target=" shame",
            competitor=" shame",
            out=tmp_path / "run",
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []


def test_config_json_round_trip():
    config = RunConfig(lr=3e-4, mode="lora", lora_target_modules=["q_proj"], readout={"center": True})
    assert RunConfig.from_json(config.to_json()) == config
    with pytest.raises(PhantomLensError, match="unknown RunConfig keys"):
        RunConfig.from_dict({"nope": 1})


def test_step_zero_loss_matches_the_models_own_forward():
    model, tokenizer = make_tiny("gpt2")
    ids = torch.tensor([tokenizer.encode(TEXT)])
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    expected = float(
        torch.nn.functional.cross_entropy(logits[None], torch.tensor([tokenizer.encode(target)[0]]))
    )
    result = finetune(
        model=model,
        tokenizer=tokenizer,
        context=TEXT,
        target=target,
        competitor=competitor,
        steps=1,
        progress=False,
    )
    assert result.trajectory["loss"].iloc[0] == pytest.approx(expected, abs=1e-6)


def test_peft_wrapped_model_is_accepted_for_lora_and_refused_for_full():
    from peft import LoraConfig, get_peft_model

    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj"]))
    result = finetune(
        model=wrapped,
        tokenizer=tokenizer,
        context=TEXT,
        target=target,
        competitor=competitor,
        mode="lora",
        steps=3,
        lr=1e-2,
        progress=False,
    )
    assert result.summary.embeddings_unchanged
    with pytest.raises(PhantomLensError, match="PEFT-wrapped"):
        finetune(
            model=wrapped,
            tokenizer=tokenizer,
            context=TEXT,
            target=target,
            competitor=competitor,
            mode="full",
            steps=1,
            progress=False,
        )
