"""The replay variant: the run re-enacted with K gradient measurements (phantomlens.replay)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tiny_models import make_tiny, tiny_pair

from phantomlens.errors import PhantomLensError
from phantomlens.predict import _replayer, predict_critical_lr, step_zero
from phantomlens.replay import GradientRecord, refresh_steps, replay_critical_lr
from phantomlens.session import prepare_model, resolve_run_context, schedule_factors
from phantomlens.settings import RunConfig
from phantomlens.train import finetune

TEXT = "She felt a deep sense of"


def replayer_for(model, tokenizer, config: RunConfig):
    probe = copy.deepcopy(model)
    torch.manual_seed(config.seed)  # the LoRA initialisation the run gets
    probe = prepare_model(probe, config)
    probe.eval()
    spec = resolve_run_context(config, tokenizer, probe)
    factors = schedule_factors(config.steps, config.schedule, config.warmup_fraction)
    return _replayer(probe, config, spec, factors), spec


@pytest.mark.parametrize(
    ("arch", "mode", "optimizer", "schedule"),
    [
        ("llama", "full", "adamw", "cosine"),
        ("llama", "lora", "adamw", "linear"),
        ("gpt2", "full", "sgd", "constant"),
        ("gpt_neox", "lora", "adamw", "cosine"),
    ],
)
def test_a_replay_measuring_every_step_is_the_run(arch, mode, optimizer, schedule) -> None:
    model, tokenizer = make_tiny(arch)
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    lr = 3e-3 if optimizer == "adamw" else 3e-1
    settings = dict(context=TEXT, target=target, competitor=competitor, mode=mode, optimizer=optimizer)
    settings |= dict(steps=8, schedule=schedule, lr=lr)
    config = RunConfig(**settings)
    replayer, spec = replayer_for(model, tokenizer, config)
    zero = step_zero(replayer.model, spec.input_ids, spec.target_id, spec.competitor_id, optimizer)
    replayer.restore()
    record = GradientRecord()
    record.add(0.0, zero.loss_gradient, torch.float32)
    replayed = replayer.final_margin(lr, record, measure_at=list(range(8)))

    run = finetune(model=model, tokenizer=tokenizer, progress=False, **settings)
    assert replayed == pytest.approx(run.summary.margin_final, abs=2e-4)
    assert replayer.passes == {"forward": 8, "backward": 7}  # 7 measured gradients, one final margin


def test_a_replay_leaves_its_copy_where_it_started_and_the_users_model_untouched() -> None:
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = RunConfig(context=TEXT, target=target, competitor=competitor, mode="full", steps=6)
    replayer, spec = replayer_for(model, tokenizer, config)
    start = [p.detach().clone() for p in replayer.params]
    zero = step_zero(replayer.model, spec.input_ids, spec.target_id, spec.competitor_id, "adamw")
    replayer.restore()
    record = GradientRecord()
    record.add(0.0, zero.loss_gradient, torch.float32)
    replayer.final_margin(1e-2, record, measure_at=[0, 1, 3])
    assert all(torch.equal(a, b) for a, b in zip(start, replayer.params, strict=True))
    assert all(p.grad is None for p in replayer.params)
    assert len(record.taus) == 3 and record.taus == sorted(record.taus)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_gradient_record_interpolates_in_distance_and_extrapolates_past_the_last_two() -> None:
    record = GradientRecord()
    record.add(0.0, [torch.tensor([0.0, 2.0])], torch.float32)
    assert torch.equal(record.at(5.0)[0], torch.tensor([0.0, 2.0]))  # one measurement: held
    record.add(1.0, [torch.tensor([1.0, 2.0])], torch.float32)
    assert torch.allclose(record.at(2.0)[0], torch.tensor([2.0, 2.0]))  # while measuring: the last two
    record.add(3.0, [torch.tensor([3.0, 0.0])], torch.float32)
    assert torch.allclose(record.at(0.5)[0], torch.tensor([0.5, 2.0]))
    assert torch.allclose(record.at(2.0)[0], torch.tensor([2.0, 1.0]))  # finished: between 1 and 3
    assert torch.allclose(record.at(4.0)[0], torch.tensor([4.0, -1.0]))  # past the last: extrapolated


def test_refresh_steps_measure_steps_zero_and_one_then_spread_over_the_distance() -> None:
    factors = schedule_factors(50, "cosine", 0.1)
    steps = refresh_steps(factors, 6)
    assert steps[:2] == [0, 1] and len(steps) == 6 and steps == sorted(set(steps))
    assert refresh_steps(factors, 1) == [0]
    assert refresh_steps(factors[:5], 9) == [0, 1, 2, 3, 4]  # K ≥ T: every step, the run itself


def test_predict_reports_the_replay_and_what_it_cost() -> None:
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    ctx = {"context": TEXT, "target": target, "competitor": competitor}
    p = predict_critical_lr(model=model, tokenizer=tokenizer, steps=20, variant="replay", refreshes=4, **ctx)
    if p.margin_velocity <= 0:
        pytest.skip("this seed's first update moves the margin down")
    assert p.variant == "replay" and p.replay_refreshes == 4
    assert p.eta_c_replay is not None and p.eta_c_replay > 0
    assert p.eta_c == pytest.approx(p.eta_c_replay / p.kappa)
    # two-point (3 + 4); per measured replay 3 more gradients; one forward per replayed LR
    measured = sum(1 for point in p.replay_points if point[2])
    assert p.replay_points[0][2] and measured in (1, 2)
    assert p.passes["backward"] == 4 + 3 * measured
    # one forward per replayed LR: the search's, then the recommended LR's (a few more)
    searched = 3 + 3 * measured + len(p.replay_points)
    assert searched <= p.passes["forward"] <= searched + 5
    # every replay is T optimiser steps, and the stored result says how many that made
    assert p.replays_run() >= len(p.replay_points) and p.replay_optimizer_steps == 20 * p.replays_run()
    assert p.to_dict()["replay_optimizer_steps"] == p.replay_optimizer_steps
    none = predict_critical_lr(model=model, tokenizer=tokenizer, steps=20, refreshes=0, **ctx)
    assert none.eta_c_replay is None and none.passes == {"forward": 3, "backward": 4}
    assert none.replays_run() == 0 and none.replay_optimizer_steps is None


@pytest.mark.parametrize("bad", [-1, 1.5, True, "6", 10**9])
def test_bad_refreshes_are_refused_before_loading(bad) -> None:
    with pytest.raises(PhantomLensError, match="refreshes must be a whole number"):
        predict_critical_lr(model="not loaded", refreshes=bad)
    with pytest.raises(PhantomLensError, match="the replay variant needs refreshes ≥ 1"):
        predict_critical_lr(model="not loaded", variant="replay", refreshes=0)


class FakeReplayer:
    """m_T(η) from a formula; a replay from a record is off by ``record_error`` per unit ln(η/η_measured)."""

    def __init__(self, final, record_error: float = 0.0, steps: int = 10) -> None:
        self.final, self.record_error = final, record_error
        self.factors = [1.0] * steps
        self.measured_at: list[float] = []
        self.replayed: list[tuple[float, float]] = []  # (η, the η its record was measured at)

    def _record_dtype(self, measurements: int):
        return torch.float32

    def final_margin(self, eta, record, measure_at=None, final=True):
        if measure_at is not None:
            self.measured_at.append(eta)
            return self.final(eta) if final else None
        self.replayed.append((eta, self.measured_at[-1]))
        return self.final(eta) + self.record_error * abs(math.log(eta / self.measured_at[-1]))


def test_the_replay_search_finds_the_root_of_an_exact_margin_curve() -> None:
    root = 2e-4
    fake = FakeReplayer(lambda eta: -2.0 + eta / root + (eta / root) ** 2)  # root at η = root
    result = replay_critical_lr(fake, [torch.zeros(1)], -2.0, 1.0 / root, 1.3 * root, refreshes=3)
    assert result.eta_c == pytest.approx(root, rel=1e-3)
    assert len(fake.measured_at) == 1  # the start was inside the trust region: one measured replay


def test_a_far_start_is_measured_again_and_record_replays_stay_near_their_measurement() -> None:
    root = 1e-4
    fake = FakeReplayer(lambda eta: 3.0 * math.log(eta / root), record_error=0.3)
    result = replay_critical_lr(fake, [torch.zeros(1)], -3.0, 3.0 / root, 4 * root, refreshes=3)
    assert len(fake.measured_at) == 2 and fake.measured_at[0] == 4 * root
    assert all(1 / 1.5 - 1e-9 <= eta / at <= 1.5 + 1e-9 for eta, at in fake.replayed)
    assert result.eta_c == pytest.approx(root, rel=0.15)
    assert [p[2] for p in result.points].count(True) == 2


def test_a_sweep_redoes_a_prediction_that_predates_the_replay_only_when_asked() -> None:
    import json
    from pathlib import Path

    from phantomlens.results import Prediction
    from phantomlens.settings import SweepConfig
    from phantomlens.sweep import _lacks_replay

    root = Path(__file__).resolve().parents[1]
    path = root / "benchmarks/results/sweeps/smollm2-135m-lora/predictions/smollm2-135m/lora/shame.json"
    stored = json.loads(path.read_text())
    assert stored["replay_refreshes"] and not _lacks_replay(Prediction.from_dict(stored))
    older = {k: v for k, v in stored.items() if not k.startswith("replay_") and k != "eta_c_replay"}
    assert _lacks_replay(Prediction.from_dict(older))
    fact = {**older, "eta_c_simulated": None, "eta_c_two_point": None}  # several tokens: no replay
    assert not _lacks_replay(Prediction.from_dict(fact))
    assert SweepConfig().refresh_predictions is False  # a resumed sweep keeps its predictions


def test_measured_replays_that_contradict_each_other_fall_back_to_the_quadratic() -> None:
    """Two measured margins falling as η rises (a real case: SmolLM2 LoRA `recall`, whose secant
    through them walked 3× past η_c) are not extrapolated; the one nearest η = 0 decides."""
    from phantomlens.replay import _measured_guess, _quadratic_root, _secant

    m0, slope = -2.0, 2e4
    contradicting = [(4.6e-4, 3.4, True), (3.1e-4, 5.6, True)]
    guess = _measured_guess(m0, slope, contradicting)
    assert guess == _quadratic_root(m0, slope, 3.1e-4, 5.6)
    assert guess < 3.1e-4  # every measured margin is positive: the root lies below them all
    assert _secant(*contradicting) > 4.6e-4  # what the secant would have said
    agreeing = [(3.1e-4, 3.4, True), (4.6e-4, 5.6, True)]
    assert _measured_guess(m0, slope, agreeing) == _secant(*agreeing)


def test_each_replay_reports_its_optimiser_steps_to_a_listener_only_when_there_is_one() -> None:
    from phantomlens.replay import REPLAY_PROGRESS

    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    ctx = {"context": TEXT, "target": target, "competitor": competitor}
    told: list[int] = []
    token = REPLAY_PROGRESS.set(told.append)
    try:
        p = predict_critical_lr(
            model=model, tokenizer=tokenizer, steps=12, variant="replay", refreshes=3, **ctx
        )
    finally:
        REPLAY_PROGRESS.reset(token)
    if p.replay_refreshes:
        assert told and set(told) == {12} and sum(told) >= p.replay_optimizer_steps
    assert REPLAY_PROGRESS.get() is None  # nothing listens outside the block
