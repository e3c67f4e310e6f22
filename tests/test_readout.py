"""The readout's mathematics: identities, the explicit density matrix, golden values, non-destruction."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny, tiny_pair

from phantomlens.readout import (
    evaluation,
    last_token_logits,
    measure,
    output_embedding,
    readout_from_logits,
    spectral,
)


def explicit_rho(unembedding: torch.Tensor, logits: torch.Tensor, center: bool) -> torch.Tensor:
    """The full-vocabulary d×d density matrix, built the naive way (tests only)."""
    u = unembedding.double()
    if center:
        u = u - u.mean(0)
    states = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)  # Gemma's padding row is zero
    p = torch.softmax(logits.double(), -1)
    return states.T @ (p[:, None] * states), states, p


@pytest.mark.parametrize("center", [False, True])
def test_fast_path_equals_explicit_density_matrix(tiny, center):
    model, tokenizer = tiny
    ids = torch.tensor([tokenizer.encode("She felt a deep sense of")])
    c, n = tokenizer.encode(" shame")[0], tokenizer.encode(" guilt")[0]
    with evaluation(model):
        logits = last_token_logits(model, ids)
    unembedding = output_embedding(model).detach()
    r, _ = readout_from_logits(
        logits, unembedding, c, n, center=center, spectral_mass=1.0, spectral_topk=10_000
    )
    rho, states, _p = explicit_rho(unembedding, logits, center)
    fid_c = float(states[c] @ rho @ states[c])
    fid_n = float(states[n] @ rho @ states[n])
    assert r.fidelity_target == pytest.approx(fid_c, abs=1e-7)
    assert r.fidelity_competitor == pytest.approx(fid_n, abs=1e-7)
    assert r.phi == pytest.approx(fid_c - fid_n, abs=1e-7)
    assert r.overlap_tc == pytest.approx(float(states[c] @ states[n]), abs=1e-7)
    # k = V here, so the top-k spectrum is the whole spectrum of ρ.
    eig = torch.linalg.eigvalsh(rho)
    # The spectrum is computed in float32 (documented): agreement to ~1e-6.
    assert r.purity == pytest.approx(float(torch.trace(rho @ rho)), abs=2e-6)
    positive = eig[eig > 1e-15]
    assert r.entropy == pytest.approx(float(-(positive * positive.log()).sum()), abs=2e-5)


def test_rho_is_a_density_matrix(llama):
    model, tokenizer = llama
    ids = torch.tensor([tokenizer.encode("The weather today is very")])
    with evaluation(model):
        logits = last_token_logits(model, ids)
    for center in (False, True):
        rho, _, _ = explicit_rho(output_embedding(model).detach(), logits, center)
        assert float(torch.trace(rho)) == pytest.approx(1.0, abs=1e-12)
        assert torch.allclose(rho, rho.T)
        assert float(torch.linalg.eigvalsh(rho).min()) > -1e-12


def test_signal_plus_drag_is_phi_and_swap_is_antisymmetric(tiny):
    model, tokenizer = tiny
    ids = torch.tensor([tokenizer.encode("She felt a deep sense of")])
    c, n = tokenizer.encode(" shame")[0], tokenizer.encode(" guilt")[0]
    with evaluation(model):
        logits = last_token_logits(model, ids)
    u = output_embedding(model).detach()
    for center in (False, True):
        r, _ = readout_from_logits(logits, u, c, n, center=center, with_spectrum=False)
        s, _ = readout_from_logits(logits, u, n, c, center=center, with_spectrum=False)
        assert r.phi == pytest.approx(r.signal + r.drag, abs=1e-12)
        assert s.phi == pytest.approx(-r.phi, abs=1e-12)
        assert s.signal == pytest.approx(-r.signal, abs=1e-12)
        assert s.drag == pytest.approx(-r.drag, abs=1e-12)
        assert s.margin == pytest.approx(-r.margin, abs=1e-6)
        assert -1.0 <= r.phi <= 1.0
        assert (r.signal > 0) == (r.p_target > r.p_competitor)


def test_golden_values_fixed_seed():
    """Regression guard for the readout on a fixed random geometry and distribution."""
    generator = torch.Generator().manual_seed(1234)
    u = torch.randn(64, 8, generator=generator)
    logits = 2.0 * torch.randn(64, generator=generator, dtype=torch.float64)
    r, _ = readout_from_logits(logits, u, 3, 7, spectral_mass=1.0, spectral_topk=64)
    golden = GOLDEN
    for key, value in golden.items():
        tolerance = 1e-5 if key in ("purity", "entropy") else 1e-9  # float32 spectrum
        assert getattr(r, key) == pytest.approx(value, rel=1e-6, abs=tolerance), key


GOLDEN = {
    "p_target": 5.878714291140119e-05,
    "p_competitor": 0.014110163142147091,
    "margin": -5.480727433918868,
    "phi": 0.020811646351581194,
    "signal": -0.01361237979099547,
    "drag": 0.03442402505934303,
    "overlap_tc": -0.17675469439454278,
    "purity": 0.20013615415211647,
    "entropy": 1.7817889326578042,
    "rank_target": 62,
    "rank_competitor": 14,
}


def test_topk_cutoff_covers_mass_and_is_capped():
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(500, 16, generator=generator)
    p = torch.softmax(3 * torch.randn(500, generator=generator, dtype=torch.float64), -1)
    _, _, k, covered = spectral(u, p, center=False, mass=0.9, cap=1024)
    top = torch.sort(p, descending=True).values
    assert covered >= 0.9 and float(top[: k - 1].sum()) < 0.9
    _, _, k_capped, _ = spectral(u, p, center=False, mass=1.0, cap=20)
    assert k_capped == 20
    # k > d takes the d×d route, k ≤ d the k×k route: both must agree with the explicit ρ_k.
    for cap in (10, 300):
        purity, _entropy, k, _ = spectral(u, p, center=False, mass=1.0, cap=cap)
        states = u / u.norm(dim=1, keepdim=True)
        top_p, ids = torch.topk(p, k)
        top_p = top_p / top_p.sum()
        rho = states[ids].double().T @ (top_p[:, None] * states[ids].double())
        assert purity == pytest.approx(float(torch.trace(rho @ rho)), abs=2e-6)


def test_logits_parity_with_model_forward(tiny):
    model, tokenizer = tiny
    ids = torch.tensor([tokenizer.encode("She felt a deep sense of")])
    with torch.no_grad():
        reference = model(input_ids=ids).logits[0, -1]
        ours = last_token_logits(model, ids)
    assert torch.equal(reference, ours)
    target, competitor = tiny_pair(model, tokenizer)
    r = measure(model, tokenizer, "She felt a deep sense of", target, competitor)
    c, n = tokenizer.encode(target)[0], tokenizer.encode(competitor)[0]
    assert r.margin == pytest.approx(float(reference[c] - reference[n]), abs=1e-6)
    assert r.loss == pytest.approx(float(-torch.log_softmax(reference.double(), -1)[c]), abs=1e-9)
    assert r.rank_competitor < r.rank_target


def test_measure_leaves_the_model_exactly_as_it_was():
    model, tokenizer = make_tiny("llama")
    model.train()
    model.model.layers[0].eval()  # a mixed-mode model: each submodule's mode must come back
    for p in model.model.layers[1].parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    measure(model, tokenizer, "She felt a deep sense of", " shame", " guilt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert modes == {name: m.training for name, m in model.named_modules()}
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


def test_measure_on_peft_wrapped_model():
    from peft import LoraConfig, get_peft_model

    model, tokenizer = make_tiny("llama")
    plain = measure(model, tokenizer, "She felt a deep sense of", " shame", " guilt")
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    r = measure(wrapped, tokenizer, "She felt a deep sense of", " shame", " guilt")
    # LoRA B starts at zero, so the wrapped model computes the same function.
    assert r.margin == pytest.approx(plain.margin, abs=1e-6)
    assert r.phi == pytest.approx(plain.phi, abs=1e-9)
    assert r.entropy == pytest.approx(plain.entropy, abs=1e-6) and r.purity == pytest.approx(
        plain.purity, abs=1e-6
    )


def test_overlap_cache_only_for_frozen_geometry_and_invalidated_by_updates():
    from phantomlens.readout import overlap_columns

    generator = torch.Generator().manual_seed(0)
    u = torch.randn(40, 6, generator=generator)
    first = overlap_columns(u, 1, 2, False)
    assert overlap_columns(u, 1, 2, False)[0] is first[0]  # frozen: cached
    with torch.no_grad():
        u.mul_(torch.linspace(0.5, 2.0, 6))  # an in-place update bumps the version counter
    again = overlap_columns(u, 1, 2, False)
    assert again[0] is not first[0] and not torch.equal(again[0], first[0])
    trainable = torch.nn.Parameter(u.clone())
    assert overlap_columns(trainable, 1, 2, False)[0] is not overlap_columns(trainable, 1, 2, False)[0]
