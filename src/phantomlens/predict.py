"""Predicting the critical learning rate without training.

See docs/critical-lr.md, "Measured η_c and the κ = 1 prediction".

Early in Adam each trainable parameter moves by about η·sign(gradient), so the margin moves per
step by η·A with A = Σ_θ (∂m/∂θ)·sign(−∂L/∂θ). With schedule shape s_t (peak 1), the flip needs
η·A·Σ_t s_t ≥ −m_0, so

    η̂_c = −m_0 / (κ · A · Σ_t s_t)

where κ absorbs what first order misses and is fitted on sweeps (``phantomlens calibrate``). For
SGD, A = −∇m·∇L. Cost: one forward and two backward passes.

What first order misses most: as the loss falls, the gradient shrinks, and so does Adam's step
m̂/√v̂ (its second moment remembers the larger early gradients). The ``simulated`` variant measures
the first update's effect on every logit (one more forward pass) and follows the margin through
that shrinking step over the T steps, a scalar computation with no further passes.
The model, its gradients, its modes and the global RNG are left exactly as they were.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from phantomlens.errors import PhantomLensError
from phantomlens.forward import last_token_logits
from phantomlens.kappa import resolve_kappa
from phantomlens.results import VARIANTS, Prediction
from phantomlens.session import load_for_run, prepare_model, resolve_run_context, schedule_factors
from phantomlens.settings import RunConfig

PASSES = {
    "first-order": {"forward": 1, "backward": 2},
    "simulated": {"forward": 2, "backward": 2},
    "two-point": {"forward": 3, "backward": 4},
}


@dataclass
class StepZero:
    """What one forward, two backward passes (and, for the simulation, one more forward) measure."""

    margin: float  # m_0
    velocity: float  # A
    logits: torch.Tensor  # z_0, float64 [V]
    logit_velocity: torch.Tensor | None  # b: logit change per unit LR of the first update, [V]
    target_id: int
    directions: list | None = None  # the first update's direction per trainable parameter


def step_zero(
    model,
    input_ids: torch.Tensor,
    target_id: int,
    competitor_id: int,
    optimizer: str,
    logit_velocity: bool = True,
) -> StepZero:
    """m_0 and A at step 0 on the trainable parameters; with ``logit_velocity``, also b.

    b is measured, not approximated: the update direction (sign(−g) for Adam, −g for SGD) is
    applied with a step h small enough to move the margin by 0.1 logit, and b = Δz / h; the step
    is then taken back (up to rounding), so call it on a copy.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    logits = last_token_logits(model, input_ids)
    margin = logits[target_id] - logits[competitor_id]
    loss = torch.nn.functional.cross_entropy(
        logits.float().unsqueeze(0), torch.tensor([target_id], device=logits.device)
    )
    grad_margin = torch.autograd.grad(margin, params, retain_graph=True, allow_unused=True)
    grad_loss = torch.autograd.grad(loss, params, allow_unused=True)
    velocity = 0.0
    directions = []
    for gm, gl in zip(grad_margin, grad_loss, strict=True):
        direction = None if gl is None else (-gl if optimizer == "sgd" else torch.sign(-gl))
        directions.append(direction)
        if gm is not None and direction is not None:
            velocity += float((gm.double() * direction.double()).sum())
    z0 = logits.detach().double()
    b = None
    if logit_velocity and velocity > 0:
        h = 0.1 / velocity
        move(params, directions, h)
        with torch.no_grad():
            b = (last_token_logits(model, input_ids).double() - z0) / h
        move(params, directions, -h)
    return StepZero(float(margin.detach()), velocity, z0, b, target_id, directions)


def move(params: list, directions: list, step: float) -> None:
    with torch.no_grad():
        for parameter, direction in zip(params, directions, strict=True):
            if direction is not None:
                parameter.add_(direction, alpha=step)


def two_point_critical_lr(
    model,
    input_ids,
    zero: StepZero,
    competitor_id: int,
    factors: list[float],
    optimizer: str,
    first_order: float,
) -> tuple[float | None, float]:
    """η̂_c when the margin velocity changes linearly with the distance travelled.

    After a displacement D along the first update's direction, A(D) ≈ A_0 + G·D, with G measured by
    re-measuring A at D_mid = η̂₁·Σs/2 (where a run at η̂₁ is half-way). Before step t a run at η
    has travelled η·P_t (P_t = Σ_{k<t} s_k), so m_T = m_0 + η·A_0·Σ s_t + η²·G·Σ s_t·P_t = 0 is
    a quadratic in η. Under LoRA this captures that the adapters' A matrices only start moving
    once B ≠ 0. Returns (η̂, A_mid); η̂ is None when the velocity decays too fast to ever flip.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    prefix = [sum(factors[:t]) for t in range(len(factors))]
    linear = sum(factors)
    quadratic = sum(f * p for f, p in zip(factors, prefix, strict=True))
    displacement = first_order * linear / 2
    move(params, zero.directions, displacement)
    with torch.enable_grad():
        _, velocity_mid = margin_velocity(model, input_ids, zero.target_id, competitor_id, optimizer)
    move(params, zero.directions, -displacement)
    growth = (velocity_mid - zero.velocity) / displacement
    a, b, c = growth * quadratic, zero.velocity * linear, zero.margin
    if abs(a) < 1e-300:
        return -c / b, velocity_mid
    discriminant = b * b - 4 * a * c
    if discriminant < 0:
        return None, velocity_mid
    return (-b + math.sqrt(discriminant)) / (2 * a), velocity_mid


def margin_velocity(model, input_ids, target_id, competitor_id, optimizer) -> tuple[float, float]:
    """(m_0, A) from one forward and two backward passes."""
    zero = step_zero(model, input_ids, target_id, competitor_id, optimizer, logit_velocity=False)
    return zero.margin, zero.velocity


def simulate_margins(
    zero: StepZero,
    eta: float,
    factors: list[float],
    optimizer: str,
    betas: tuple[float, float] = (0.9, 0.999),
) -> list[float]:
    """The margin after each of the T updates, when the logits move along b and the step shrinks.

    Logits follow z_t = z_0 + η·S_t·b. The loss gradient's scale γ_t = ‖p_t − e_c‖/‖p_0 − e_c‖
    falls as p_t sharpens; SGD's step scales with γ_t, Adam's with m̂_t/√v̂_t over the γ history
    (its second moment remembers the larger early gradients). S_{t+1} = S_t + s_t·r_t.
    """
    if zero.logit_velocity is None:
        raise ValueError("the simulation needs the logit velocity b")
    onehot = torch.zeros_like(zero.logits)
    onehot[zero.target_id] = 1.0
    scale0 = float((torch.softmax(zero.logits, -1) - onehot).norm())
    beta1, beta2 = betas
    cumulative, first, second = 0.0, 0.0, 0.0
    margins = []
    for t, factor in enumerate(factors):
        p = torch.softmax(zero.logits + eta * cumulative * zero.logit_velocity, -1)
        gamma = float((p - onehot).norm()) / scale0
        if optimizer == "sgd":
            rate = gamma
        else:
            first = beta1 * first + (1 - beta1) * gamma
            second = beta2 * second + (1 - beta2) * gamma**2
            rate = (first / (1 - beta1 ** (t + 1))) / math.sqrt(second / (1 - beta2 ** (t + 1)))
        cumulative += factor * rate
        margins.append(zero.margin + eta * cumulative * zero.velocity)
    return margins


def simulated_critical_lr(zero: StepZero, factors: list[float], optimizer: str, guess: float) -> float:
    """The smallest η whose simulated margin is positive after the last update (log bisection)."""

    def flips(eta: float) -> bool:
        return simulate_margins(zero, eta, factors, optimizer)[-1] > 0

    low, high = guess / 1e3, guess * 1e3
    while flips(low):
        low /= 1e3
    while not flips(high):
        high *= 1e3
    for _ in range(60):
        middle = math.sqrt(low * high)
        low, high = (low, middle) if flips(middle) else (middle, high)
        if high / low < 1 + 1e-6:
            break
    return high


def predict_critical_lr(
    config=None,
    *,
    model=None,
    tokenizer=None,
    kappa: float | None = None,
    calibration: str | Path | dict | None = None,
    variant: str = "first-order",
    **overrides,
) -> Prediction:
    """η̂_c for the run ``config`` would make (same settings and defaults as ``finetune``).

    ``variant="first-order"`` is the formula of docs/critical-lr.md (1 forward + 2 backward passes);
    ``"simulated"`` follows the margin through Adam's shrinking steps (2 forward + 2 backward).
    Both are computed; ``eta_c`` is the chosen one, divided by that variant's κ.
    """
    if variant not in VARIANTS:
        raise PhantomLensError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    config = (config or RunConfig()).replace(**overrides)
    if config.facts is not None:
        raise PhantomLensError(
            "predict_critical_lr predicts one context; for a fact file use phantomlens.predict_facts "
            "(phantomlens predict --facts FILE)"
        )
    kappa, source = resolve_kappa(kappa, calibration, config, variant)  # bad κ: fail before loading
    config, model, tokenizer = load_for_run(config, model, tokenizer, {})
    from phantomlens.facttrain import single_fact

    fact = single_fact(config, tokenizer)
    if fact is not None:
        return _predict_fact(config, model, tokenizer, fact, (kappa, source), variant)
    spec = resolve_run_context(config, tokenizer, model)
    factors = schedule_factors(config.steps, config.schedule, config.warmup_fraction)
    zero, (first_order, simulated, two_point, velocity_mid), spent = _measure(model, config, spec, factors)
    total = sum(factors)
    chosen_kappa1 = {"first-order": first_order, "simulated": simulated, "two-point": two_point}[variant]
    return Prediction(
        eta_c=None if chosen_kappa1 is None else chosen_kappa1 / kappa,
        variant=variant,
        eta_c_first_order=first_order,
        eta_c_simulated=simulated,
        eta_c_two_point=two_point,
        margin_velocity_mid=velocity_mid,
        margin_initial=zero.margin,
        margin_velocity=zero.velocity,
        schedule_sum=total,
        kappa=kappa,
        kappa_source=source,
        passes=spent,
        mode=config.mode,
        optimizer=config.optimizer,
        steps=config.steps,
        schedule=config.schedule,
        model=config.model,
        context={"text": spec.text, "target": spec.target, "competitor": spec.competitor},
    )


def _predict_fact(config, model, tokenizer, fact, kappa: tuple[float, str], variant: str) -> Prediction:
    """A single fact of several tokens (or a chat prompt): the first-order prediction on the
    sequence margin, the definition the fact-set prediction uses with N = 1."""
    from phantomlens.factpredict import measure_facts
    from phantomlens.facttrain import _tokenized

    if variant != "first-order":
        raise PhantomLensError(
            f"the {variant} variant is defined for single-token contexts; a fact of several tokens "
            "(or a chat prompt) is predicted first-order: use --variant first-order"
        )
    tokenized = _tokenized(tokenizer, model, [fact])
    total = sum(schedule_factors(config.steps, config.schedule, config.warmup_fraction))
    _, (record,) = measure_facts(model, config, tokenized, total, 1.0)
    chosen = tokenized[0].fact
    return Prediction(
        eta_c=None if record.eta_c_single is None else record.eta_c_single / kappa[0],
        variant=variant,
        eta_c_first_order=record.eta_c_single,
        eta_c_simulated=None,
        eta_c_two_point=None,
        margin_velocity_mid=None,
        margin_initial=record.margin_initial,
        margin_velocity=record.velocity_single,
        schedule_sum=total,
        kappa=kappa[0],
        kappa_source=kappa[1],
        passes={"forward": 3, "backward": 3},
        mode=config.mode,
        optimizer=config.optimizer,
        steps=config.steps,
        schedule=config.schedule,
        model=config.model,
        context={
            "text": chosen.prompt,
            "target": chosen.target,
            "competitor": chosen.competitor,
            "chat": chosen.chat,
            "branch": tokenized[0].branch,
        },
    )


def _measure(model, config, spec, factors: list[float]):
    """Step-zero measurements and the three κ = 1 predictions, on a private copy of the model.

    LoRA injection, requires_grad changes and the probe steps must not touch the user's model,
    nor may the LoRA initialisation consume the caller's random numbers.
    """
    rng = torch.get_rng_state()
    try:
        probe = copy.deepcopy(model)
        for parameter in probe.parameters():
            parameter.grad = None
        torch.manual_seed(config.seed)  # the same LoRA initialisation the run would get
        probe = prepare_model(probe, config)
        probe.eval()
        with torch.enable_grad():
            zero = step_zero(probe, spec.input_ids, spec.target_id, spec.competitor_id, config.optimizer)
        first_order = simulated = two_point = velocity_mid = None
        spent = dict(PASSES["first-order"])
        if zero.margin >= 0:
            first_order = simulated = two_point = 0.0  # already flipped: any LR keeps it
        elif zero.velocity > 0:
            spent = dict(PASSES["two-point"])  # b (one forward), then A re-measured half-way
            first_order = -zero.margin / (zero.velocity * sum(factors))
            simulated = simulated_critical_lr(zero, factors, config.optimizer, first_order)
            two_point, velocity_mid = two_point_critical_lr(
                probe, spec.input_ids, zero, spec.competitor_id, factors, config.optimizer, first_order
            )
        del probe
    finally:
        torch.set_rng_state(rng)
    return zero, (first_order, simulated, two_point, velocity_mid), spent
