"""Predicting η_c for facts and fact sets, without training (docs/critical-lr.md, "Facts").

For a fact f with sequence margin m_f = ℓ(a|x) − ℓ(b|x), Adam's first step moves the margin by
η·A per step. Trained alone, A_f = Σ_θ (∂m_f/∂θ)·sign(−∂L_f/∂θ); trained in a set F, Adam follows
the sign of the *joint* gradient, so A_f = Σ_θ (∂m_f/∂θ)·sign(−∂L_F/∂θ). Either gives
η̂_c,f = −m_f / (κ·A_f·Σ_t s_t), and η̂_c(F, q) is the q-quantile of the per-fact values. The gap
between single and joint predictions measures how much the facts interfere. For SGD the direction
is −∂L/∂θ instead of its sign.

Cost: one forward and one backward pass per micro-batch for the joint gradient, then per fact two
forward passes (target and competitor, teacher-forced) and two backward passes. The user's model,
its gradients, modes and the global RNG are left as they were (the work is done on a copy).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from phantomlens.errors import PhantomLensError
from phantomlens.facts import Fact, TokenizedFact
from phantomlens.kappa import resolve_kappa
from phantomlens.results import StoredResult, one_of
from phantomlens.settings import RunConfig

FACT_SET_PREDICTION = "fact-set-prediction"


@dataclass(kw_only=True)
class FactPrediction(StoredResult):
    """One fact's step-zero measurements and its η̂_c, alone and inside the set."""

    what: ClassVar[str] = "fact prediction"
    name: str
    target_tokens: int
    competitor_tokens: int
    branch: int
    margin_initial: float  # m_f at step 0
    velocity_single: float  # A_f along the fact's own update direction
    velocity_joint: float  # A_f along the set's update direction
    eta_c_single: float | None  # None: A ≤ 0, the first update moves the margin away from the flip
    eta_c_joint: float | None
    seconds: float  # wall time of this fact's passes


@dataclass(kw_only=True)
class FactSetPrediction(StoredResult):
    """``phantomlens predict --facts F``: every fact's η̂_c, single and joint, and the set's quantile."""

    what: ClassVar[str] = "fact-set prediction"
    kind: str = one_of(FACT_SET_PREDICTION)
    model: str
    mode: str
    optimizer: str
    steps: int
    schedule: str
    schedule_sum: float
    kappa: float
    kappa_source: str
    quantile: float
    eta_c_joint_set: float | None  # η̂_c(F, q) from the joint predictions
    eta_c_single_set: float | None  # the same quantile of the single-fact predictions
    n_facts: int
    seconds_joint_gradient: float
    seconds_per_fact: float  # mean over facts, joint gradient included
    passes: dict[str, int]
    facts: list[FactPrediction]


def critical_lr(margin: float, velocity: float, kappa: float, schedule_sum: float) -> float | None:
    """−m / (κ·A·Σs); 0 for a fact already flipped; None when the margin does not move up."""
    if margin >= 0:
        return 0.0
    if velocity <= 0:
        return None
    return -margin / (kappa * velocity * schedule_sum)


def set_quantile(values: list[float | None], q: float) -> float | None:
    """The smallest η at which at least a fraction q of the facts are predicted to flip."""
    ordered = sorted(math.inf if v is None else v for v in values)
    chosen = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    return None if math.isinf(chosen) else chosen


def _direction(gradient: torch.Tensor | None, optimizer: str) -> torch.Tensor | None:
    if gradient is None:
        return None
    return -gradient if optimizer == "sgd" else torch.sign(-gradient)


def _dot(gradients, directions) -> float:
    total = 0.0
    for g, d in zip(gradients, directions, strict=True):
        if g is not None and d is not None:
            total += float((g.double() * d.double()).sum())
    return total


def joint_direction(model, params: list, facts: list[TokenizedFact], optimizer: str, micro_batch: int):
    """The first update's direction on the joint loss L_F (mean of the facts' answer losses)."""
    from phantomlens.factset import FactBatch, forward_chunk

    batch = FactBatch(facts, params[0].device, micro_batch)
    total: list[torch.Tensor | None] = [None] * len(params)
    for chunk in batch.chunks:
        loss = forward_chunk(model, chunk, margins=False).loss.sum() / len(facts)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        total = [g if t is None else (t if g is None else t + g) for t, g in zip(total, grads, strict=True)]
    return [_direction(g, optimizer) for g in total]


def fact_velocities(model, params: list, fact: TokenizedFact, joint: list, optimizer: str):
    """(m_f, A_f alone, A_f in the set) from two forward and two backward passes."""
    from phantomlens.forward import answer_logprobs

    target = answer_logprobs(model, fact.prompt_ids, fact.target_ids)
    competitor = answer_logprobs(model, fact.prompt_ids, fact.competitor_ids)
    margin = target.sum() - competitor.sum()
    grad_margin = torch.autograd.grad(margin, params, retain_graph=True, allow_unused=True)
    grad_loss = torch.autograd.grad(-target.mean(), params, allow_unused=True)
    alone = [_direction(g, optimizer) for g in grad_loss]
    return float(margin.detach()), _dot(grad_margin, alone), _dot(grad_margin, joint)


def _private_copy(model, config: RunConfig):
    """A copy prepared as the run would prepare it (LoRA injected with the run's seed)."""
    from phantomlens.session import prepare_model

    probe = copy.deepcopy(model)
    for parameter in probe.parameters():
        parameter.grad = None
    torch.manual_seed(config.seed)
    from phantomlens.models import dependency_noise_off

    with dependency_noise_off():  # PEFT's deprecation notices are not the user's business
        probe = prepare_model(probe, config)
    probe.eval()
    return probe, [p for p in probe.parameters() if p.requires_grad]


def measure_facts(model, config: RunConfig, facts: list[TokenizedFact], schedule_sum: float, kappa: float):
    """Every fact's step-zero measurements; (joint-gradient seconds, list of FactPrediction)."""
    rng = torch.get_rng_state()
    try:
        probe, params = _private_copy(model, config)
        with torch.enable_grad():
            started = time.perf_counter()
            joint = joint_direction(probe, params, facts, config.optimizer, config.micro_batch)
            joint_seconds = time.perf_counter() - started
            records = [_one_fact(probe, params, fact, joint, config, schedule_sum, kappa) for fact in facts]
        del probe
    finally:
        torch.set_rng_state(rng)
    return joint_seconds, records


def _one_fact(probe, params, fact: TokenizedFact, joint, config, schedule_sum: float, kappa: float):
    started = time.perf_counter()
    margin, alone, together = fact_velocities(probe, params, fact, joint, config.optimizer)
    return FactPrediction(
        name=fact.fact.label,
        target_tokens=len(fact.target_ids),
        competitor_tokens=len(fact.competitor_ids),
        branch=fact.branch,
        margin_initial=margin,
        velocity_single=alone,
        velocity_joint=together,
        eta_c_single=critical_lr(margin, alone, kappa, schedule_sum),
        eta_c_joint=critical_lr(margin, together, kappa, schedule_sum),
        seconds=round(time.perf_counter() - started, 4),
    )


def _as_facts(items) -> list[Fact]:
    """Facts given in Python: ``Fact`` objects or dicts with their fields."""
    if isinstance(items, Fact | dict):
        items = [items]
    try:
        return [item if isinstance(item, Fact) else Fact(**item) for item in items]
    except TypeError:
        raise PhantomLensError(
            "facts must be a fact file's path, or a list of Fact objects or dicts with prompt, target "
            "(competitor, name, chat)"
        ) from None


def predict_facts(
    config: RunConfig | None = None,
    *,
    model=None,
    tokenizer=None,
    facts: list[Fact] | None = None,
    kappa: float | None = None,
    calibration: str | Path | dict | None = None,
    quantile: float = 1.0,
    **overrides,
) -> FactSetPrediction:
    """η̂_c of every fact of ``config.facts`` (or ``facts``), alone and in the set; the model is
    loaded once. Same settings and defaults as ``finetune`` on that fact file."""
    from phantomlens.facttrain import _tokenized, config_facts
    from phantomlens.session import load_for_run, schedule_factors

    if not (isinstance(quantile, int | float) and 0 < quantile <= 1):
        raise PhantomLensError(f"quantile must be in (0, 1], got {quantile!r}")
    if isinstance(facts, str | Path):  # a fact file, as finetune(facts=...) takes it
        overrides, facts = {**overrides, "facts": str(facts)}, None
    config = (config or RunConfig()).replace(**overrides)
    kappa, source = resolve_kappa(kappa, calibration, config, "first-order")
    facts = _as_facts(facts) if facts is not None else config_facts(config)
    if not facts:
        raise PhantomLensError("no facts to predict; give a fact file (--facts FILE)")
    config, model, tokenizer = load_for_run(config, model, tokenizer, {})
    tokenized = _tokenized(tokenizer, model, facts)
    total = sum(schedule_factors(config.steps, config.schedule, config.warmup_fraction))
    started = time.perf_counter()
    joint_seconds, records = measure_facts(model, config, tokenized, total, kappa)
    elapsed = time.perf_counter() - started
    chunks = math.ceil(len(tokenized) / config.micro_batch)
    return FactSetPrediction(
        kind=FACT_SET_PREDICTION,
        model=config.model,
        mode=config.mode,
        optimizer=config.optimizer,
        steps=config.steps,
        schedule=config.schedule,
        schedule_sum=total,
        kappa=kappa,
        kappa_source=source,
        quantile=float(quantile),
        eta_c_joint_set=set_quantile([r.eta_c_joint for r in records], quantile),
        eta_c_single_set=set_quantile([r.eta_c_single for r in records], quantile),
        n_facts=len(records),
        seconds_joint_gradient=round(joint_seconds, 4),
        seconds_per_fact=round(elapsed / len(records), 4),
        passes={"forward": chunks + 2 * len(records), "backward": chunks + 2 * len(records)},
        facts=records,
    )
