"""The LR schedules: ``linear`` against HF's own, runs that follow it, and a trainer's scheduler
given to the prediction as explicit factors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import make_tiny, tiny_pair

from phantomlens.cli import main
from phantomlens.errors import PhantomLensError
from phantomlens.predict import predict_critical_lr
from phantomlens.session import schedule_factor, schedule_factors
from phantomlens.settings import SCHEDULES

TEXT = "She felt a deep sense of"


def hf_linear(steps: int, warmup_steps: int) -> list[float]:
    from transformers import get_linear_schedule_with_warmup

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, steps)
    return [scheduler.lr_lambdas[0](t) for t in range(steps + 1)]


@pytest.mark.parametrize(
    ("steps", "warmup_fraction"), [(50, 0.1), (20, 0.0), (7, 0.3), (100, 0.05), (3, 0.5)]
)
def test_linear_is_exactly_hf_linear_schedule_with_warmup(steps, warmup_fraction):
    ours = schedule_factors(steps, "linear", warmup_fraction)
    warmup = math.ceil(warmup_fraction * steps)
    assert ours == pytest.approx(hf_linear(steps, warmup)[:steps], abs=1e-12)  # step 0 at LR 0 too
    assert schedule_factor(steps, steps, "linear", warmup_fraction) == 0.0
    assert sum(ours) == pytest.approx(sum(hf_linear(steps, warmup)[:steps]))  # the prediction's Σ s_t
    assert all(a >= b for a, b in zip(ours[warmup:], ours[warmup + 1 :], strict=False))


def test_every_schedule_is_offered():
    assert SCHEDULES == ("cosine", "linear", "constant")
    assert schedule_factors(4, "linear", 0.0) == [1.0, 0.75, 0.5, 0.25]
    assert schedule_factors(10, "linear", 0.2)[:3] == [0.0, 0.5, 1.0]
    with pytest.raises(PhantomLensError, match="schedule must be"):
        schedule_factor(0, 10, "cyclic")


def test_a_run_follows_the_linear_schedule(tmp_path, capsys):
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    out = tmp_path / "run"
    argv = ["run", "--model", str(path), "--context", TEXT, "--target", target, "--competitor", competitor]
    flags = ["--schedule", "linear", "--steps", "8", "--warmup-fraction", "0.25", "--lr", "1e-3"]
    assert main([*argv, *flags, "--spectral-topk", "0", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    import pandas as pd

    lrs = pd.read_parquet(out / "trajectory.parquet")["lr"].to_numpy()[:8]
    assert lrs.tolist() == pytest.approx([1e-3 * f for f in schedule_factors(8, "linear", 0.25)])
    assert json.loads((out / "config.json").read_text())["schedule"] == "linear"


def test_prediction_of_a_trainers_own_scheduler_from_its_lambdas():
    """What the HF callback does: factors read from the Trainer's LambdaLR, normalised to peak 1."""
    from transformers import get_cosine_schedule_with_warmup

    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, TEXT)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 3, 30)
    lambdas = [scheduler.lr_lambdas[0](t) for t in range(30)]
    factors = [f / max(lambdas) for f in lambdas]
    p = predict_critical_lr(
        model=model,
        tokenizer=tokenizer,
        factors=factors,
        optimizer="adamw",
        mode="lora",
        context=TEXT,
        target=target,
        competitor=competitor,
    )
    assert p.schedule == "explicit" and p.steps == 30 and p.schedule_sum == pytest.approx(sum(factors))
    assert p.eta_c > 0 and p.eta_recommended >= p.eta_c
    assert p.kappa == 1.0 and "outside the calibration's domain" in p.kappa_note
    linear = predict_critical_lr(
        model=model,
        tokenizer=tokenizer,
        mode="lora",
        schedule="linear",
        steps=30,
        context=TEXT,
        target=target,
        competitor=competitor,
    )
    from_factors = predict_critical_lr(
        model=model,
        tokenizer=tokenizer,
        mode="lora",
        factors=schedule_factors(30, "linear", 0.1),
        context=TEXT,
        target=target,
        competitor=competitor,
    )
    assert from_factors.eta_c == pytest.approx(linear.eta_c) and linear.schedule == "linear"
