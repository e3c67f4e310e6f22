"""The stop rule as a pure function of recorded margins, and the loss-plateau baseline."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
from tiny_models import make_tiny, tiny_pair

from phantomlens.errors import PhantomLensError
from phantomlens.probe import Probe, loss_plateau_step
from phantomlens.settings import StopRule

TEXT = "She felt a deep sense of"


def test_first_secure_step_needs_patience_consecutive_secure_observations():
    rule = StopRule(margin_safe=1.0, patience=3)
    margins = [-2, -1, 0.5, 1.2, 1.5, 0.9, 1.0, 2.0, 3.0]
    assert rule.first_secure_step(margins) == 8  # 1.2, 1.5 broken by 0.9; then 1.0 (≥), 2.0, 3.0
    assert rule.first_secure_step(margins[:8]) is None
    assert StopRule(margin_safe=1.0, patience=1).first_secure_step(margins) == 3
    assert StopRule(margin_safe=5.0, patience=1).first_secure_step(margins) is None
    assert rule.first_secure_step([]) is None


def test_every_context_must_be_secure_and_nan_is_not():
    rule = StopRule(margin_safe=1.0, patience=2)
    both = [[2.0, 0.0], [2.0, 1.5], [2.0, 1.5]]
    assert rule.first_secure_step(both) == 2  # the second context is secure only from t = 1
    assert rule.first_secure_step([2.0, math.nan, 2.0, 2.0]) == 3


def test_a_rule_without_patience_is_refused():
    with pytest.raises(PhantomLensError, match="patience must be at least 1"):
        StopRule(patience=0)


@pytest.mark.parametrize("patience", [1, 2, 3, 5])
def test_first_secure_step_agrees_with_the_probe_on_random_sequences(patience):
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    rng = random.Random(patience)
    rule = StopRule(margin_safe=0.7, patience=patience)
    for _ in range(200):
        length = rng.randint(0, 12)
        margins = [[rng.choice([-1.0, 0.69, 0.7, 2.0, math.nan]) for _ in range(2)] for _ in range(length)]
        probe = Probe(model, tokenizer, [(TEXT, target, competitor)], rule)
        stopped = None
        for t, pair in enumerate(margins):
            readouts = {"a": SimpleNamespace(margin=pair[0]), "b": SimpleNamespace(margin=pair[1])}
            if probe.record(t, readouts).should_stop:
                stopped = t
                break
        assert rule.first_secure_step(margins) == stopped, margins


def test_loss_plateau_follows_the_early_stopping_callbacks():
    losses = [5.0, 4.0, 3.0, 2.9995, 2.9990, 2.9992, 1.0]
    # improvements under min_delta do not count: waits at indices 3, 4, 5 → stop at 5
    assert loss_plateau_step(losses, min_delta=1e-3, patience=3) == 5
    assert loss_plateau_step(losses, min_delta=0.0, patience=3) is None
    assert loss_plateau_step([3.0, 2.0, math.nan, math.nan], patience=2) == 3  # NaN never improves
    assert loss_plateau_step([3.0, 3.0], patience=1) == 1
    with pytest.raises(PhantomLensError, match="patience"):
        loss_plateau_step([1.0], patience=0)
