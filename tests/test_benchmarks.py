"""The benchmarks: their baselines on a tiny model, and their use of the library's own rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import make_tiny

from benchmarks import early_stop, fact_readout, overhead, recommended_lr
from benchmarks.critical_lr import prediction_passes, range_test
from phantomlens.results import load_run_dir
from tools.fmt import add_seconds, device_times, fmt, pct, sci, value_range

ROOT = Path(__file__).resolve().parents[1]


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


def test_evaluate_applies_the_library_rules_to_a_trajectory():
    margins = [-2, -1, 0.5, 1.2, 1.5, 1.1, 2.0, 3.0]
    steps = len(margins)
    trajectory = pd.DataFrame(
        {"step": range(steps + 1), "margin": [*margins, 3.5], "loss": [5, 4, 3, 2.5, 2.2, 2.1, 2.1, 2.1, 2.1]}
    )
    result = early_stop.evaluate(trajectory, steps, margin_safe=1.0, patience=3, min_delta=1e-3)
    assert result["flip_stop_steps"] == 6 and result["flip_retained_at_stop"]  # 1.2, 1.5, 1.1 end at 5
    assert result["plateau_stop_steps"] == steps  # the plateau (index 6, 7) is too short to trigger
    assert result["saving"] == 1 - 6 / steps


@pytest.mark.parametrize("run", ["smollm2-135m-lora/shame", "gemma3-270m-full/chilly"])
def test_the_stored_early_stopping_results_follow_from_the_stored_runs(run):
    stored = json.loads((early_stop.RESULTS / "early_stop.json").read_text())
    model_mode, context = run.split("/")
    entry = next(
        r for r in stored["per_run"] if f"{r['model']}-{r['mode']}" == model_mode and r["context"] == context
    )
    summary, trajectory, _ = load_run_dir(early_stop.RUNS / run)
    rule = stored["rule"]
    recomputed = early_stop.evaluate(trajectory, summary.config["steps"], **rule)
    assert {k: entry[k] for k in recomputed} == recomputed


def test_the_overhead_benchmark_times_every_variant_on_a_tiny_model():
    model, tokenizer = make_tiny("llama")
    result = overhead.bench_mode(model, tokenizer, "lora", rounds=2, warmup=1)
    assert set(result["step_times_s"]) == {"plain", "instrumented", "no_spectrum", "naive"}
    assert all(len(times) == 2 for times in result["step_times_s"].values())
    assert result["median_readout_s"] > 0 and result["topk_used"] >= 1


def test_the_fact_readout_benchmark_times_both_variants_on_a_tiny_model():
    model, tokenizer = make_tiny("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    facts, source = fact_readout.bench_facts(tokenizer, 3, path=None)
    assert len(facts) == 3 and source == "built-in contexts"
    result = fact_readout.bench_n(model, facts, torch.device("cpu"), rounds=2, warmup=1)
    assert set(result["step_times_s"]) == {"plain", "instrumented"}
    assert all(len(times["wall"]) == len(times["cpu"]) == 2 for times in result["step_times_s"].values())
    assert len(result["record_times_s"]["wall"]) == result["frame_steps"] == 3  # warm-up included
    assert result["readout_per_step_s"] > 0 and result["overhead"] > 0 and result["overhead_cpu_time"] > 0
    assert fact_readout.verdict([result])["n_facts"] == 3
    prediction = fact_readout.bench_prediction(model, tokenizer, facts[:2], torch.device("cpu"))
    assert prediction.get("skipped") or prediction["seconds_per_fact"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # ran on copies


def test_the_recommended_lr_benchmark_interpolates_a_sweep_in_log_lr():
    # a synthetic sweep whose final margin is exactly linear in ln η (root at η = 1e-4), runs unordered
    def margin(lr: float) -> float:
        return 2.0 * np.log(lr / 1e-4)

    lrs = [4e-4, 5e-5, 1e-4, 1.1e-4, 2e-4]
    runs = [(lr, margin(lr)) for lr in lrs] + [(3e-4, float("nan"))]  # a NaN margin is left out
    for lr in (6e-5, 1.05e-4, 1.7e-4, 3.5e-4):
        assert recommended_lr.margin_at(runs, lr) == pytest.approx(margin(lr))
    assert recommended_lr.margin_at(runs, 2e-4) == margin(2e-4)  # a run at that LR: its own margin
    assert recommended_lr.margin_at(runs, 4.5e-4) is None and recommended_lr.margin_at(runs, 1e-5) is None
    assert recommended_lr.margin_at([(1e-4, 0.5)], 1.2e-4) is None  # one run straddles nothing

    row = {"margin_safe": 1.0}
    inside = recommended_lr.evaluate(row, runs, 1e-4, 1.7e-4)
    assert inside["covered"] and inside["reaches_safe"] and inside["flipped"]
    assert inside["ratio_to_eta_c"] == pytest.approx(1.7)
    short = recommended_lr.evaluate(row, runs, 1e-4, 1.2e-4)  # flipped, but below margin_safe
    assert short["flipped"] and not short["reaches_safe"]
    above = recommended_lr.evaluate(row, runs, 1e-4, 1e-3)
    assert not above["covered"] and above["reaches_safe"] is None
    assert above["not_covered"] == "above every run" and above["above_a_run_at_safe"]
    summary = recommended_lr.summary([{"x": inside}, {"x": short}, {"x": above}], "x")
    assert (summary["covered"], summary["reaches_safe"], summary["flipped"]) == (2, 1, 2)
    assert summary["above_a_run_at_safe"] == 1 and summary["median_ratio_to_eta_c"] == pytest.approx(1.7)


def test_the_blind_kappa_of_a_held_out_model_comes_from_the_other_models():
    rows = [
        {"key": "lora/adamw/two-point", "model": m, "kappa_i": k}
        for m, k in [("a", 1.0), ("a", 4.0), ("b", 9.0), ("b", 9.0)]
    ]
    kappas = recommended_lr.blind_kappas({"contexts": rows})
    assert kappas[("lora/adamw/two-point", "b")] == pytest.approx((2.0, np.log(4.0) / np.sqrt(2)))
    assert kappas[("lora/adamw/two-point", "a")] == pytest.approx((9.0, 0.0))


def test_a_replay_recommendation_comes_from_its_replays_not_a_curve():
    from types import SimpleNamespace

    # predict's replay recommendation (κ, σ applied) undone to where the replays reach margin_safe
    p = SimpleNamespace(variant="replay", eta_recommended=3e-4, kappa=1.5, kappa_log_std=0.1)
    reach = recommended_lr._replay_reach(p)
    assert reach == pytest.approx(3e-4 * 1.5 / np.exp(0.1))
    row = {"variant": "replay", "replay_reach": reach, "margin_safe": 1.0}
    assert recommended_lr.recommended(row, 1.5, 0.1) == pytest.approx(3e-4)  # predict's own number
    assert recommended_lr.recommended(row, 2.0, None) == pytest.approx(reach / 2.0)  # a blind κ
    assert recommended_lr._replay_reach(SimpleNamespace(**(vars(p) | {"variant": "two-point"}))) is None


def test_prediction_costs_come_from_the_library():
    from phantomlens.predict import PASSES

    assert (
        prediction_passes("first-order")
        == PASSES["first-order"]["forward"] + PASSES["first-order"]["backward"]
    )
    assert prediction_passes("two-point") > prediction_passes("first-order")


def test_the_shared_formatters():
    assert fmt(None) == fmt(float("nan")) == pct(None) == value_range([None, float("nan")]) == "–"
    assert pct(0.1234) == "12.3%" and pct(0.5, 0) == "50%" and fmt(0.5, "+.2f") == "+0.50"
    assert value_range([3.0, None, 0.25]) == "0.25–3" and value_range([2.0]) == "2"
    assert sci(2.47955e-05) == "2.5e-5" and sci(1234.0, 2) == "1.23e3"
    seconds: dict[str, float] = {}
    add_seconds(seconds, "cuda:0", 90.0)
    add_seconds(seconds, None, 60.0)  # a record without a device ran on the CPU
    add_seconds(seconds, "cpu", 60.04)
    assert seconds == {"cuda": 90.0, "cpu": 120.0}
    assert device_times(seconds) == "2 min on the 2-core CPU machine, 2 min on one H200 or H100 GPU"
    assert (
        device_times({"cpu": 7200.0}, hours=True, notes={"cpu": "shared"})
        == "2.0 h on the 2-core CPU machine (shared)"
    )
    assert device_times({}) == "–"
