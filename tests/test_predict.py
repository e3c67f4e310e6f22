"""Prediction without training, calibration and the blind test, and the geometry classes."""

from __future__ import annotations

import copy
import json
import math

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
    # What was computed: every variant, when the margin can move up. With T = 1 the replay measures
    # no gradient beyond step zero's: one forward per replayed LR.
    replays = len(prediction.replay_points or [])
    if prediction.margin_velocity > 0:  # (and a few forwards more for the recommended LR's replays)
        assert prediction.passes["backward"] == 4 and prediction.passes["forward"] >= 3 + replays
    else:
        assert prediction.passes == {"forward": 1, "backward": 2}


def test_prediction_formula_and_schedule_sum():
    model, tokenizer, ctx = setup()
    first = {"variant": "first-order", "calibration": False}
    p = predict_critical_lr(model=model, tokenizer=tokenizer, steps=50, **first, **ctx)
    assert p.schedule_sum == pytest.approx(26.0, abs=1e-9)  # warm-up 0.2..1.0 then cosine
    assert p.eta_c == pytest.approx(-p.margin_initial / (p.margin_velocity * p.schedule_sum))
    assert p.kappa == 1.0 and p.kappa_source == "uncalibrated" and p.eta_c_low is None
    half = predict_critical_lr(
        model=model, tokenizer=tokenizer, steps=50, kappa=2.0, variant="first-order", **ctx
    )
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
    first = {"model": model, "tokenizer": tokenizer, "variant": "first-order", **ctx}
    plain = predict_critical_lr(calibration=False, **first)
    fitted = predict_critical_lr(calibration=tmp_path / "calib.json", **first)
    assert fitted.eta_c == pytest.approx(plain.eta_c / 4.0) and "calib.json" in fitted.kappa_source
    # these test sweeps store neither schedule nor T, nor a settings file: no domain to check
    assert "records no domain" in fitted.kappa_note
    with pytest.raises(PhantomLensError, match="no κ for lora/adamw/first-order"):
        predict_critical_lr(mode="lora", calibration=tmp_path / "calib.json", **first)
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
    simulated = predict_critical_lr(
        model=model, tokenizer=tokenizer, variant="simulated", calibration=False, refreshes=0, **ctx
    )
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
    lora = predict_critical_lr(
        model=model, tokenizer=tokenizer, mode="lora", variant="two-point", calibration=False, refreshes=0,
        **ctx,
    )
    # LoRA's A matrices have no gradient while B = 0, so the margin speeds up once B has moved.
    assert lora.margin_velocity_mid > lora.margin_velocity
    assert lora.eta_c == lora.eta_c_two_point < lora.eta_c_first_order
    assert lora.passes == {"forward": 3, "backward": 4}


# --- predict for use: the default variant, the shipped calibration and its domain, the interval,
# --- the recommended LR, --plot, explicit schedule factors ------------------------------------------


def cli_predict(tiny_dir, capsys, *flags):
    _, _, ctx = setup()
    argv = ["predict", "--model", str(tiny_dir), "--context", TEXT, "--target", ctx["target"]]
    code = main([*argv, "--competitor", ctx["competitor"], *map(str, flags)])
    return code, capsys.readouterr()


@pytest.mark.parametrize("variant", ["first-order", "simulated", "two-point"])
def test_every_variant_is_selectable_by_the_cli(tiny_dir, capsys, variant):
    code, out = cli_predict(tiny_dir, capsys, "--variant", variant, "--json")
    assert code == 0, out.err
    p = json.loads(out.out)
    field = {
        "first-order": "eta_c_first_order",
        "simulated": "eta_c_simulated",
        "two-point": "eta_c_two_point",
    }
    assert p["variant"] == variant and p["eta_c"] == pytest.approx(p[field[variant]] / p["kappa"])
    assert p["kappa_source"].endswith(f"[full/adamw/{variant}]")  # T = 50, cosine: the shipped κ


def test_the_default_variant_is_the_most_accurate_in_the_stored_blind_test():
    from phantomlens.kappa import shipped_calibration
    from phantomlens.predict import DEFAULT_VARIANT
    from tools.ship_calibration import best_variants

    shipped = shipped_calibration()
    assert best_variants(shipped["blind"]) == shipped["best_variant"]
    assert {b["variant"] for b in shipped["best_variant"].values()} == {DEFAULT_VARIANT}
    assert {key.split("/")[0] for key in shipped["best_variant"]} == {"full", "lora"}  # checked per mode
    model, tokenizer, ctx = setup()
    assert predict_critical_lr(model=model, tokenizer=tokenizer, **ctx).variant == DEFAULT_VARIANT


def test_the_shipped_calibration_is_what_the_stored_sweeps_give_and_names_no_machine_path():
    from phantomlens.atomic import strict_json
    from phantomlens.kappa import shipped_calibration
    from tools.ship_calibration import build

    shipped = shipped_calibration()
    assert json.loads(strict_json(build())) == shipped  # else: python -m tools.ship_calibration
    text = json.dumps(shipped)
    assert "/work/" not in text and "/home/" not in text
    assert all(
        not s.startswith("/") and s.startswith("benchmarks/results/sweeps/") for s in shipped["sweeps"]
    )
    for key, entry in shipped["kappa"].items():
        mode, optimizer, _ = key.split("/")
        fitted = {"mode": mode, "optimizer": optimizer, "schedule": "cosine", "steps": 50}
        fitted["warmup_fraction"] = 0.1
        if "widened_by" in entry:  # κ measured invariant across T and schedules: the study's domain
            (point,) = entry["domain"]
            assert "cosine" in point["schedule"] and point["steps"][0] <= 50 <= point["steps"][1]
            assert {k: v for k, v in point.items() if k not in ("schedule", "steps")} == {
                k: v for k, v in fitted.items() if k not in ("schedule", "steps")
            }
        else:
            assert entry["domain"] == [fitted]


def test_the_shipped_kappa_applies_inside_its_domain_only():
    from phantomlens.kappa import shipped_calibration

    model, tokenizer, ctx = setup()
    kwargs = {"model": model, "tokenizer": tokenizer, "variant": "first-order", **ctx}
    inside = predict_critical_lr(**kwargs)
    entry = shipped_calibration()["kappa"]["full/adamw/first-order"]
    assert (
        inside.kappa == pytest.approx(entry["value"])
        and "inside the calibration's domain" in inside.kappa_note
    )
    assert inside.eta_c == pytest.approx(inside.eta_c_first_order / entry["value"])
    for change in ({"steps": 20}, {"schedule": "linear"}, {"warmup_fraction": 0.2}, {"optimizer": "sgd"}):
        outside = predict_critical_lr(**kwargs, **change)
        assert outside.kappa == 1.0 and outside.eta_c == outside.eta_c_first_order, change
        assert outside.kappa_note.startswith(
            "outside the calibration's domain (fitted on full/adamw, cosine, T = 50"
        ) or "has no κ for full/sgd/first-order" in outside.kappa_note
        assert outside.kappa_note.endswith("κ = 1, uncalibrated") and outside.eta_c_low is None


def test_the_cli_says_plainly_whether_the_run_is_inside_the_domain(tiny_dir, capsys):
    from phantomlens.kappa import shipped_calibration
    from phantomlens.predict import DEFAULT_VARIANT

    code, inside = cli_predict(tiny_dir, capsys)
    assert code == 0, inside.err
    kappa = shipped_calibration()["kappa"][f"full/adamw/{DEFAULT_VARIANT}"]["value"]
    assert f"{DEFAULT_VARIANT}; κ = {kappa:.4g}" in inside.out
    assert "inside the calibration's domain" in inside.out
    code, outside = cli_predict(tiny_dir, capsys, "--steps", "20")
    assert (
        code == 0 and "outside the calibration's domain (fitted on full/adamw, cosine, T = 50" in outside.out
    )
    assert "κ = 1, uncalibrated" in outside.out and "interval" not in outside.out


def test_a_user_calibration_carries_its_domain_and_an_old_one_is_accepted_with_a_note(tmp_path):
    from phantomlens.kappa import shipped_calibration

    model, tokenizer, ctx = setup()
    kwargs = {"model": model, "tokenizer": tokenizer, "variant": "first-order", **ctx}
    mine = {"kappa": {"full/adamw/first-order": {"value": 3.0, "log_std": 0.5, "domain": [
        {"mode": "full", "optimizer": "adamw", "schedule": "linear", "steps": 20, "warmup_fraction": 0.0}
    ]}}}  # fmt: skip
    inside = predict_critical_lr(calibration=mine, steps=20, schedule="linear", warmup_fraction=0.0, **kwargs)
    assert inside.kappa == 3.0 and inside.eta_c_high == pytest.approx(inside.eta_c * math.exp(0.5))
    outside = predict_critical_lr(calibration=mine, **kwargs)
    assert outside.kappa == 1.0 and "fitted on full/adamw, linear, T = 20, warm-up 0" in outside.kappa_note
    old = shipped_calibration()
    for entry in old["kappa"].values():
        del entry["domain"], entry["interval_coverage"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    anywhere = predict_critical_lr(calibration=path, steps=20, **kwargs)  # not checked: applied
    assert anywhere.kappa == pytest.approx(old["kappa"]["full/adamw/first-order"]["value"])
    assert "records no domain" in anywhere.kappa_note and anywhere.eta_c_low is not None
    with pytest.raises(PhantomLensError, match="domain of κ for full/adamw/first-order must name one mode"):
        predict_critical_lr(
            calibration={"kappa": {"full/adamw/first-order": {"value": 1, "domain": [{}]}}}, **kwargs
        )


def test_the_interval_comes_from_kappas_spread():
    from phantomlens.kappa import shipped_calibration

    model, tokenizer, ctx = setup()
    p = predict_critical_lr(model=model, tokenizer=tokenizer, mode="lora", **ctx)
    from phantomlens.predict import DEFAULT_VARIANT

    sigma = shipped_calibration()["kappa"][f"lora/adamw/{DEFAULT_VARIANT}"]["log_std"]
    assert p.kappa_log_std == pytest.approx(sigma)
    assert p.eta_c_low == pytest.approx(p.eta_c * math.exp(-sigma))
    assert p.eta_c_high == pytest.approx(p.eta_c * math.exp(sigma))
    given = predict_critical_lr(model=model, tokenizer=tokenizer, mode="lora", kappa=1.3, **ctx)
    assert given.eta_c_low is given.eta_c_high is given.kappa_log_std is None  # no spread known


def final_margin(p, eta: float) -> float:
    """The closed-form margin models of first-order and two-point, from the stored fields."""
    quadratic = p.two_point_quadratic if p.variant == "two-point" else 0.0
    x = p.kappa * eta
    return p.margin_initial + x * p.margin_velocity * p.schedule_sum + x * x * quadratic


@pytest.mark.parametrize("mode", ["full", "lora"])
@pytest.mark.parametrize("variant", ["first-order", "simulated", "two-point"])
def test_the_recommended_lr_reaches_margin_safe_in_the_variants_model(mode, variant):
    from phantomlens.settings import StopRule

    model, tokenizer, ctx = setup()
    p = predict_critical_lr(model=model, tokenizer=tokenizer, mode=mode, variant=variant, curve=True, **ctx)
    assert p.margin_safe == StopRule().margin_safe > 0
    assert p.eta_recommended >= p.eta_c > 0
    # Where the central κ's margin curve reaches margin_safe; the recommendation is e^σ above it,
    # so that κ at the low end of its spread still reaches margin_safe.
    crossing = p.eta_recommended * math.exp(-(p.kappa_log_std or 0.0))
    if variant != "simulated":
        assert final_margin(p, crossing) == pytest.approx(p.margin_safe, abs=1e-6)
        assert final_margin(p, p.eta_c) == pytest.approx(0.0, abs=1e-6)
        assert final_margin(p, crossing * 0.99) < p.margin_safe
    lrs, margins = np.array(p.margin_curve["lr"]), np.array(p.margin_curve["margin"])
    assert (margins[lrs < crossing * 0.999] < p.margin_safe).all()
    assert (margins[(lrs > crossing * 1.001) & (lrs < crossing * 3)] >= p.margin_safe).all()
    safer = predict_critical_lr(
        model=model, tokenizer=tokenizer, mode=mode, variant=variant, margin_safe=2.0, **ctx
    )
    assert safer.eta_recommended > p.eta_recommended


def test_plot_draws_the_margin_against_lr_and_checks_the_path_first(tiny_dir, capsys, tmp_path):
    out = tmp_path / "lr.png"
    code, printed = cli_predict(tiny_dir, capsys, "--mode", "lora", "--plot", out)
    assert code == 0, printed.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"written   {out}" in printed.out
    assert "use       lr " in printed.out and "margin_safe = 1" in printed.out
    code, printed = cli_predict(tiny_dir, capsys, "--plot", tmp_path)  # a directory
    assert code == 2 and printed.err.startswith("error:") and len(printed.err.strip().splitlines()) == 1


def test_explicit_schedule_factors_for_a_trainers_own_scheduler():
    from phantomlens.session import schedule_factors

    model, tokenizer, ctx = setup()
    kwargs = {"model": model, "tokenizer": tokenizer, "mode": "lora", **ctx}
    ours = predict_critical_lr(**kwargs)
    same = predict_critical_lr(factors=schedule_factors(50, "cosine", 0.1), **kwargs)
    assert same.eta_c == pytest.approx(ours.eta_c) and same.kappa == ours.kappa  # inside the domain
    assert same.schedule == "explicit" and same.steps == 50 and same.warmup_fraction is None
    scaled = [3e-4 * f for f in [*range(1, 6), *range(20, 0, -1)]]  # LRs, not factors: peak taken as 1
    p = predict_critical_lr(factors=scaled, **kwargs)
    expected = [f / max(scaled) for f in scaled]
    assert p.steps == 25 and p.schedule_sum == pytest.approx(sum(expected))
    assert p.kappa == 1.0 and "an explicit schedule, T = 25" in p.kappa_note
    assert p.eta_c_first_order == pytest.approx(-p.margin_initial / (p.margin_velocity * sum(expected)))
    for bad in ([], [0.0, 0.0], [1.0, float("nan")], [1.0, -0.5], ["x"]):
        with pytest.raises(PhantomLensError, match="factors must"):
            predict_critical_lr(factors=bad, **kwargs)


def test_a_fact_of_several_tokens_defaults_to_first_order_with_a_note():
    model, tokenizer, _ = setup()
    fact = {"context": "The river flows into the", "target": "sea and the", "competitor": "ocean"}
    p = predict_critical_lr(model=model, tokenizer=tokenizer, **fact)
    assert p.variant == "first-order" and "predicted first-order" in p.variant_note
    assert p.kappa == 1.0 and "fitted on single-token contexts" in p.kappa_note
    assert p.eta_recommended is None or p.eta_recommended >= (p.eta_c or 0.0)
    with pytest.raises(PhantomLensError, match="use --variant first-order"):
        predict_critical_lr(model=model, tokenizer=tokenizer, variant="two-point", **fact)


def test_a_fact_file_is_still_predicted_first_order_by_default(tiny_dir, capsys, tmp_path):
    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"prompt": "She felt a deep sense of", "target": "shame", "competitor": "guilt"}\n'
        '{"prompt": "The river flows into the", "target": "sea and the", "competitor": "ocean"}\n'
    )
    assert main(["predict", "--model", str(tiny_dir), "--facts", str(facts), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_facts"] == 2 and out["kappa_source"] == "uncalibrated"
    assert main(["predict", "--model", str(tiny_dir), "--facts", str(facts), "--variant", "two-point"]) == 2


def test_an_older_prediction_file_still_reads_and_rewrites_as_it_was():
    from phantomlens.results import Prediction

    model, tokenizer, ctx = setup()
    new = predict_critical_lr(model=model, tokenizer=tokenizer, curve=True, **ctx).to_dict()
    assert Prediction.from_dict(new).to_dict() == new
    added = ("warmup_fraction", "eta_c_low", "eta_c_high", "kappa_log_std", "kappa_note", "variant_note",
             "margin_safe", "eta_recommended", "two_point_quadratic", "margin_curve")  # fmt: skip
    old = {k: v for k, v in new.items() if k not in added}
    assert Prediction.from_dict(old).to_dict() == old


def test_when_two_point_has_no_root_the_default_falls_back_to_first_order(monkeypatch):
    import phantomlens.predict

    def no_root(*args, **kwargs):
        return None, 1.0, -1.0

    monkeypatch.setattr(phantomlens.predict, "two_point_critical_lr", no_root)
    model, tokenizer, ctx = setup()
    p = predict_critical_lr(model=model, tokenizer=tokenizer, refreshes=0, **ctx)  # no replay either
    assert p.variant == "first-order" and "falls back to first-order" in p.variant_note
    assert p.kappa_source.endswith("[full/adamw/first-order]") and p.eta_c == p.eta_c_first_order / p.kappa
    asked = predict_critical_lr(model=model, tokenizer=tokenizer, variant="two-point", refreshes=0, **ctx)
    assert asked.eta_c is None and asked.variant == "two-point" and "no root" in asked.variant_note
    # The replay starts from first-order where two-point has no root, and still answers.
    replay = predict_critical_lr(model=model, tokenizer=tokenizer, variant="replay", refreshes=3, **ctx)
    assert replay.eta_c_replay and replay.replay_points[0][0] == pytest.approx(replay.eta_c_first_order)


def test_the_use_line_allows_for_kappas_spread_only_when_there_is_one():
    from phantomlens.cli import _prediction_lines

    model, tokenizer, ctx = setup()
    spread = predict_critical_lr(model=model, tokenizer=tokenizer, mode="lora", **ctx)
    none = predict_critical_lr(model=model, tokenizer=tokenizer, mode="lora", kappa=1.0, **ctx)
    assert spread.kappa_log_std and none.kappa_log_std is None
    with_spread, without = (
        next(x for x in _prediction_lines(p) if x.startswith("use")) for p in (spread, none)
    )
    assert "even with κ at the low end of its spread" in with_spread
    assert without.startswith("use       lr ") and "spread" not in without
    # With the shipped κ the worst miss of its own blind test is shown beside the interval.
    from phantomlens.kappa import shipped_calibration

    key = f"lora/adamw/{spread.variant}"
    worst = max(b["max_abs_error"] for b in shipped_calibration()["blind"] if b["key"] == key)
    blind = next(x for x in _prediction_lines(spread) if "blind test of this κ" in x)
    assert f"worst {worst:.1%}" in blind
    assert not any("blind test" in x for x in _prediction_lines(none))  # κ given: no such test


def test_the_figure_draws_the_pessimistic_curve_the_recommended_lr_is_read_from():
    from phantomlens.plot import prediction_figure

    model, tokenizer, ctx = setup()
    kwargs = {"model": model, "tokenizer": tokenizer, "mode": "lora", "variant": "first-order", "curve": True}
    p = predict_critical_lr(**kwargs, **ctx)
    lines = {line.get_label().split(":")[0]: line for line in prediction_figure(p).axes[0].get_lines()}
    central, pessimistic = (
        lines[f"predicted final margin ({p.variant}), κ = {p.kappa:.4g}"],
        lines["pessimistic"],
    )
    sigma = p.kappa_log_std
    assert "κ·e^−σ" in pessimistic.get_label() and "low end of κ's spread" in pessimistic.get_label()
    assert np.allclose(pessimistic.get_xdata(), np.array(central.get_xdata()) * math.exp(sigma))
    # where the pessimistic curve crosses margin_safe is the recommended LR (first-order: a line in η)
    x, y = np.array(pessimistic.get_xdata()), np.array(pessimistic.get_ydata())
    assert (y[x < p.eta_recommended * 0.999] < p.margin_safe).all()
    assert (y[x > p.eta_recommended * 1.001] >= p.margin_safe).all()
    plain = predict_critical_lr(**kwargs, kappa=1.0, **ctx)  # no spread: one curve
    labels = [line.get_label() for line in prediction_figure(plain).axes[0].get_lines()]
    assert not any(label.startswith("pessimistic") for label in labels)


def test_a_fact_file_prediction_says_which_lr_to_use(tiny_dir, capsys, tmp_path):
    from phantomlens.clifacts import format_fact_prediction, safe_lr
    from phantomlens.factpredict import FactSetPrediction

    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"prompt": "She felt a deep sense of", "target": "shame", "competitor": "guilt"}\n'
        '{"prompt": "The river flows into the", "target": "sea and the", "competitor": "ocean"}\n'
    )
    argv = ["predict", "--model", str(tiny_dir), "--facts", str(facts)]
    assert main([*argv, "--json"]) == 0
    p = FactSetPrediction.from_dict(json.loads(capsys.readouterr().out))

    def final(f, lr: float) -> float:  # first-order, along the set's joint direction
        return f.margin_initial + p.kappa * lr * f.velocity_joint * p.schedule_sum

    lr = safe_lr(p, 1.0)
    if lr is None:  # some fact's margin does not move up: no LR brings every fact there
        assert any(f.margin_initial < 1 and f.velocity_joint <= 0 for f in p.facts)
    else:
        assert all(final(f, lr) >= 1 - 1e-9 for f in p.facts)
        assert min(final(f, lr) for f in p.facts) == pytest.approx(1.0) or lr == 0.0
        assert safe_lr(p, 2.0) > lr
    assert main(argv) == 0
    printed = capsys.readouterr().out
    use = next(line for line in printed.splitlines() if line.startswith("use"))
    assert use in format_fact_prediction(p, 1.0).splitlines()
    assert use.startswith("use       none" if lr is None else f"use       lr {lr:.4g}: ")
    assert "knife edge" in use or lr is None


def test_any_lr_is_said_when_the_margin_already_reaches_margin_safe(tiny_dir, capsys):
    code, out = cli_predict(tiny_dir, capsys, "--margin-safe", "-1e9")  # the flag takes an exponent
    assert code == 0, out.err
    use = next(line for line in out.out.splitlines() if line.startswith("use"))
    assert use.startswith("use       any LR: the margin is already ≥ margin_safe = -1e+09 at step 0 (m0 = ")
    code, out = cli_predict(tiny_dir, capsys, "--margin-safe", "-1e9", "--json")
    assert json.loads(out.out)["eta_recommended"] == 0.0  # 0: any LR, as MarginModel.reaching says


def test_a_margin_safe_below_zero_does_not_promise_a_flip():
    from phantomlens.cli import _prediction_lines

    model, tokenizer, ctx = setup()
    p = predict_critical_lr(model=model, tokenizer=tokenizer, variant="first-order", **ctx)
    assert p.margin_initial < 0
    below = predict_critical_lr(
        model=model, tokenizer=tokenizer, variant="first-order", margin_safe=p.margin_initial / 2, **ctx
    )
    assert 0 < below.eta_recommended < below.eta_c  # short of the flip, as asked
    use = next(line for line in _prediction_lines(below) if line.startswith("use"))
    assert use.startswith("use       lr ") and "knife edge" not in use
    assert use.endswith("(margin_safe ≤ 0: at this LR a target need not overtake its competitor)")


def test_a_fact_file_whose_facts_already_reach_margin_safe_may_use_any_lr(tiny_dir, capsys, tmp_path):
    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"prompt": "She felt a deep sense of", "target": "shame", "competitor": "guilt"}\n'
        '{"prompt": "The river flows into the", "target": "sea and the", "competitor": "ocean"}\n'
    )
    argv = ["predict", "--model", str(tiny_dir), "--facts", str(facts), "--margin-safe", "-1e9"]
    assert main(argv) == 0
    use = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("use"))
    assert use == "use       any LR: every fact already has margin ≥ margin_safe = -1e+09 at step 0"


#: A fitted point of a full/adamw calibration, less its schedule and steps.
POINT = {"mode": "full", "optimizer": "adamw", "warmup_fraction": 0.1}


def _widened(schedules: list[str]) -> tuple[dict, dict]:
    """The tiny model's predict arguments, and a calibration (κ = 2) widened to ``schedules`` at
    T = 20–100."""
    model, tokenizer, ctx = setup()
    kwargs = {"model": model, "tokenizer": tokenizer, "variant": "first-order", "refreshes": 0, **ctx}
    domain = [{**POINT, "schedule": schedules, "steps": [20, 100]}]
    return kwargs, {"kappa": {"full/adamw/first-order": {"value": 2.0, "log_std": 0.1, "domain": domain}}}


def test_a_widened_domain_holds_for_its_schedules_and_range_of_t_and_is_checked():
    kwargs, widened = _widened(["constant", "cosine"])
    for inside in ({"steps": 20}, {"steps": 73, "schedule": "constant"}, {"steps": 100}):
        assert predict_critical_lr(calibration=widened, **kwargs, **inside).kappa == 2.0, inside
    for outside in ({"steps": 19}, {"steps": 101}, {"schedule": "linear"}):
        p = predict_critical_lr(calibration=widened, **kwargs, **outside)
        assert p.kappa == 1.0 and "fitted on full/adamw, constant or cosine, T = 20–100" in p.kappa_note
    bad_points = [{"steps": [100, 20]}, {"steps": [20]}, {"schedule": []}, {"steps": [True, 3]}]
    bad_points += [{"steps": [-5, 60]}, {"schedule": "bogus"}, {"mode": ["full", "lora"]}]
    for bad in bad_points:
        entry = {"value": 1, "domain": [{**POINT, "schedule": "cosine", "steps": 50, **bad}]}
        with pytest.raises(PhantomLensError, match="must name one mode and optimizer, a schedule"):
            predict_critical_lr(calibration={"kappa": {"full/adamw/first-order": entry}}, **kwargs)


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"value": 1e300}, "must be a number from 0.001 to 1000"),
        ({"value": 1.0, "log_std": 1e6}, "log_std of κ for full/adamw/first-order must be a number from 0"),
        ({"value": 1.0, "log_std": "0.3"}, "log_std of κ"),
    ],
)
def test_a_calibration_with_an_unusable_kappa_is_refused_before_loading(entry, says):
    with pytest.raises(PhantomLensError, match=says):
        predict_critical_lr(model="not loaded", calibration={"kappa": {"full/adamw/first-order": entry}})


def test_explicit_factors_equal_to_a_widened_domains_schedule_are_inside_it():
    from phantomlens.session import schedule_factors

    kwargs, widened = _widened(["linear", "cosine"])
    cosine = schedule_factors(50, "cosine", 0.1)
    assert predict_critical_lr(calibration=widened, factors=cosine, **kwargs).kappa == 2.0
    constant = schedule_factors(50, "constant", 0.1)
    assert predict_critical_lr(calibration=widened, factors=constant, **kwargs).kappa == 1.0
    short = schedule_factors(10, "cosine", 0.1)
    assert predict_critical_lr(calibration=widened, factors=short, **kwargs).kappa == 1.0


def test_a_sweep_row_whose_kappa_is_absurd_is_refused_by_calibrate_naming_it(tmp_path):
    import shutil
    from pathlib import Path

    import pandas as pd

    stored = Path(__file__).resolve().parents[1] / "results" / "unseen" / "smollm2-135m-lora"
    copy = tmp_path / "sweep"
    shutil.copytree(stored, copy)
    table = pd.read_parquet(copy / "critical_lr.parquet")
    table.loc[table["context"] == "assist", "eta_c_predicted_replay_kappa1"] = 1e308
    table.to_parquet(copy / "critical_lr.parquet")
    with pytest.raises(PhantomLensError, match=r"assist \(lora/adamw/replay\): predicted 1e\+308"):
        load_sweeps([copy])


def test_a_huge_number_in_a_calibration_is_shown_cut_short(tmp_path):
    big = int("9" * 400)
    with pytest.raises(PhantomLensError) as caught:
        predict_critical_lr(
            model="not loaded", calibration={"kappa": {"full/adamw/first-order": {"value": big}}}
        )
    assert "must be a number from 0.001 to 1000" in str(caught.value) and len(str(caught.value)) < 200
