"""Prediction without training, calibration and the blind test, and the geometry classes."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import make_tiny, tiny_pair

from phantomlens.calibrate import blind_test, calibrate, load_sweeps
from phantomlens.classify import CROWDING_BOUNDARY, classify_geometry
from phantomlens.cli import main
from phantomlens.errors import PhantomLensError
from phantomlens.predict import predict_critical_lr
from phantomlens.train import finetune

TEXT = "She felt a deep sense of"


def setup(arch="llama"):
    model, tokenizer = make_tiny(arch)
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    return model, tokenizer, {"context": TEXT, "target": target, "competitor": competitor}


@pytest.mark.parametrize(("mode", "optimizer"), [("full", "adamw"), ("lora", "adamw"), ("full", "sgd")])
def test_margin_velocity_matches_the_first_real_step(mode, optimizer):
    model, tokenizer, ctx = setup()
    lr = 1e-5 if optimizer == "adamw" else 1e-3
    prediction = predict_critical_lr(
        model=model, tokenizer=tokenizer, mode=mode, optimizer=optimizer, steps=1, schedule="constant", **ctx
    )
    run = finetune(
        model=model,
        tokenizer=tokenizer,
        mode=mode,
        optimizer=optimizer,
        lr=lr,
        steps=1,
        schedule="constant",
        progress=False,
        **ctx,
    )
    observed = run.trajectory["margin"].iloc[1] - run.trajectory["margin"].iloc[0]
    assert observed == pytest.approx(lr * prediction.margin_velocity, rel=0.05)
    spent = {"forward": 3, "backward": 4} if prediction.margin_velocity > 0 else {"forward": 1, "backward": 2}
    assert prediction.passes == spent  # what was computed: every variant, when the margin can move up


def test_prediction_formula_and_schedule_sum():
    model, tokenizer, ctx = setup()
    p = predict_critical_lr(model=model, tokenizer=tokenizer, steps=50, **ctx)
    assert p.schedule_sum == pytest.approx(26.0, abs=1e-9)  # warm-up 0.2..1.0 then cosine
    assert p.eta_c == pytest.approx(-p.margin_initial / (p.margin_velocity * p.schedule_sum))
    half = predict_critical_lr(model=model, tokenizer=tokenizer, steps=50, kappa=2.0, **ctx)
    assert half.eta_c == pytest.approx(p.eta_c / 2)


def test_prediction_leaves_model_grads_modes_and_rng_untouched():
    model, tokenizer, ctx = setup()
    model.train()
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 0.5)
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    predict_critical_lr(model=model, tokenizer=tokenizer, mode="lora", **ctx)
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.training and not hasattr(model, "peft_config")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def write_sweep(directory, model, rows):
    directory.mkdir(parents=True)
    frame = pd.DataFrame(
        [
            {
                "model": model,
                "context": c,
                "mode": "full",
                "optimizer": "adamw",
                "eta_c": eta,
                "eta_c_predicted_kappa1": pred,
                "bracket_low": eta / 1.01,
                "bracket_high": eta,
            }
            for c, eta, pred in rows
        ]
    )
    frame.to_parquet(directory / "critical_lr.parquet")
    return directory


def test_calibration_kappa_spread_and_blind_test(tmp_path):
    a = write_sweep(tmp_path / "a", "m1", [("x", 1e-6, 2e-6), ("y", 2e-6, 4.4e-6), ("z", 1e-6, None)])
    b = write_sweep(tmp_path / "b", "m2", [("x", 1e-5, 2.1e-5), ("y", 3e-5, 6e-5)])
    result = calibrate([a, b])
    kappa = result["kappa"]["full/adamw/first-order"]
    ratios = np.array([2.0, 2.2, 2.1, 2.0])
    assert kappa["value"] == pytest.approx(float(np.exp(np.log(ratios).mean())))
    assert kappa["n"] == 4 and kappa["cv"] == pytest.approx(ratios.std(ddof=1) / ratios.mean())
    blind = pd.DataFrame(result["blind_per_context"])
    held_m2 = blind[blind["model"] == "m2"]
    kappa_m1 = float(np.exp(np.log([2.0, 2.2]).mean()))
    expected = 2.1e-5 / kappa_m1 / 1e-5 - 1
    assert held_m2[held_m2["context"] == "x"]["relative_error"].iloc[0] == pytest.approx(expected)
    assert {b["model"] for b in result["blind"]} == {"m1", "m2"}
    assert len(blind_test(load_sweeps([a]))) == 0  # one model: nothing held out


def test_calibration_file_feeds_prediction(tmp_path, capsys):
    a = write_sweep(tmp_path / "a", "m1", [("x", 1e-6, 4e-6), ("y", 2e-6, 8e-6)])
    assert main(["calibrate", str(a), "--out", str(tmp_path / "calib.json")]) == 0
    calib = json.loads((tmp_path / "calib.json").read_text())
    assert calib["kappa"]["full/adamw/first-order"]["value"] == pytest.approx(4.0)
    model, tokenizer, ctx = setup()
    plain = predict_critical_lr(model=model, tokenizer=tokenizer, **ctx)
    fitted = predict_critical_lr(model=model, tokenizer=tokenizer, calibration=tmp_path / "calib.json", **ctx)
    assert fitted.eta_c == pytest.approx(plain.eta_c / 4.0) and "calib.json" in fitted.kappa_source
    with pytest.raises(PhantomLensError, match="no κ for lora/adamw/first-order"):
        predict_critical_lr(
            model=model, tokenizer=tokenizer, mode="lora", calibration=tmp_path / "calib.json", **ctx
        )
    assert main(["calibrate", str(tmp_path / "missing")]) == 2


def test_predict_cli_json(tiny_dir, capsys):
    _, _, ctx = setup()
    code = main(
        [
            "predict",
            "--model",
            str(tiny_dir),
            "--context",
            TEXT,
            "--target",
            ctx["target"],
            "--competitor",
            ctx["competitor"],
            "--mode",
            "lora",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"eta_c", "margin_velocity", "passes", "kappa"} <= set(out)
    assert out["mode"] == "lora" and out["steps"] == 50


def test_classes_from_constructed_geometries():
    class Fake(torch.nn.Module):
        def __init__(self, weight):
            super().__init__()
            self.head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            self.head.weight.data = weight

        def get_output_embeddings(self):
            return self.head

    generator = torch.Generator().manual_seed(0)
    isotropic = torch.randn(4000, 64, generator=generator)
    open_field = classify_geometry(Fake(isotropic), "iso", pairs=20_000)
    assert open_field.geometry_class == "B" and open_field.crowding == pytest.approx(1.0, rel=0.1)
    assert open_field.lora_sufficient_predicted
    crowded = classify_geometry(Fake(isotropic * 0.3 + 1.0), "cone", pairs=20_000)
    assert crowded.geometry_class == "A" and crowded.mean_squared_overlap >= CROWDING_BOUNDARY
    assert not crowded.lora_sufficient_predicted and crowded.effective_dimension_fraction < 1


def test_classify_cli(tiny_dir, capsys):
    assert main(["classify", "--model", str(tiny_dir), "--json", "--pairs", "5000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["geometry_class"] in ("A", "B") and out["hidden_size"] == 32


def test_simulated_variant_reduces_to_first_order_over_one_step():
    model, tokenizer, ctx = setup()
    p = predict_critical_lr(model=model, tokenizer=tokenizer, steps=1, schedule="constant", **ctx)
    assert p.eta_c_simulated == pytest.approx(p.eta_c_first_order, rel=1e-5)
    simulated = predict_critical_lr(model=model, tokenizer=tokenizer, variant="simulated", **ctx)
    assert simulated.passes == {"forward": 3, "backward": 4} and simulated.eta_c == simulated.eta_c_simulated


def test_simulated_margin_path_tracks_a_real_run_better_than_the_linear_path():
    from phantomlens.predict import simulate_margins, step_zero
    from phantomlens.session import prepare_model, resolve_run_context
    from phantomlens.settings import RunConfig

    model, tokenizer, ctx = setup()
    lr, steps = 1e-2, 15
    run = finetune(
        model=copy.deepcopy(model),
        tokenizer=tokenizer,
        lr=lr,
        steps=steps,
        schedule="constant",
        progress=False,
        **ctx,
    )
    actual = run.trajectory["margin"].to_numpy()[1:]
    config = RunConfig(**ctx)
    spec = resolve_run_context(config, tokenizer, model)
    probe = prepare_model(copy.deepcopy(model), config)
    zero = step_zero(probe, spec.input_ids, spec.target_id, spec.competitor_id, "adamw")
    simulated = np.array(simulate_margins(zero, lr, [1.0] * steps, "adamw"))
    linear = zero.margin + lr * zero.velocity * np.arange(1, steps + 1)
    assert run.trajectory["loss"].iloc[-1] < 0.5 * run.trajectory["loss"].iloc[0]  # p really moved
    assert np.abs(simulated - actual).mean() < np.abs(linear - actual).mean()
    assert simulated[0] == pytest.approx(linear[0])  # the first step is exact in both


def test_two_point_variant_reduces_to_first_order_over_one_step_and_sees_lora_growth():
    model, tokenizer, ctx = setup()
    one = predict_critical_lr(model=model, tokenizer=tokenizer, steps=1, schedule="constant", **ctx)
    assert one.eta_c_two_point == pytest.approx(one.eta_c_first_order, rel=1e-9)  # no P_t term
    lora = predict_critical_lr(model=model, tokenizer=tokenizer, mode="lora", variant="two-point", **ctx)
    # LoRA's A matrices have no gradient while B = 0, so the margin speeds up once B has moved.
    assert lora.margin_velocity_mid > lora.margin_velocity
    assert lora.eta_c == lora.eta_c_two_point < lora.eta_c_first_order
    assert lora.passes == {"forward": 3, "backward": 4}
