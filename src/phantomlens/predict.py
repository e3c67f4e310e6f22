"""Predicting the critical learning rate without training, and the learning rate to use.

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
that shrinking step over the T steps, a scalar computation with no further passes. The
``two-point`` variant re-measures A half-way and lets it change linearly with the distance.

The ``replay`` variant (``phantomlens.replay``) assumes no model of the path: the run's own optimiser
takes its T steps on a copy with the loss gradient measured K times, and η̂_c is where the replayed
final margin crosses 0 (about 20 passes at K = 6, plus T optimiser steps per replayed LR).

η_c is a knife edge (a run at η_c ends with the margin at 0), so a prediction also gives the LR to
*use*: the smallest η whose predicted final margin m_T(η) reaches ``margin_safe`` (the stop rule's),
from the chosen variant's own margin model, and an interval from κ's spread. Each variant's model
is m_T at κ = 1 evaluated at κ·η, so that its root is η̂_c. The default variant is the most
accurate in the stored blind test (``DEFAULT_VARIANT``), divided by the shipped κ when the run lies
in the domain that κ was fitted on (``phantomlens.kappa``).
The model, its gradients, its modes and the global RNG are left exactly as they were.
"""

from __future__ import annotations

import contextlib
import copy
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from phantomlens.errors import PhantomLensError
from phantomlens.forward import last_token_logits
from phantomlens.kappa import KappaChoice, choose_kappa
from phantomlens.precision import mixed_precision
from phantomlens.replay import Replayer, ReplayResult, replay_critical_lr, rising_root
from phantomlens.results import DEFAULT_REFRESHES, DEFAULT_VARIANT, FALLBACK_VARIANTS, VARIANTS, Prediction
from phantomlens.session import load_for_run, prepare_model, resolve_run_context, schedule_factors
from phantomlens.settings import DEFAULT_LR, MAX_STEPS, RunConfig

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
    loss_gradient: list | None = None  # ∂L/∂θ at step 0 per trainable parameter (the replay's first)


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
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grad_loss, strict=True)]
    return StepZero(float(margin.detach()), velocity, z0, b, target_id, directions, grads)


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
) -> tuple[float | None, float, float]:
    """η̂_c when the margin velocity changes linearly with the distance travelled.

    After a displacement D along the first update's direction, A(D) ≈ A_0 + G·D, with G measured by
    re-measuring A at D_mid = η̂₁·Σs/2 (where a run at η̂₁ is half-way). Before step t a run at η
    has travelled η·P_t (P_t = Σ_{k<t} s_k), so m_T = m_0 + η·A_0·Σ s_t + η²·G·Σ s_t·P_t = 0 is
    a quadratic in η. Under LoRA this captures that the adapters' A matrices only start moving
    once B ≠ 0. Returns (η̂, A_mid, G·Σ s_t·P_t); η̂ is None when the velocity decays too fast to
    ever flip.
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
    curvature = (velocity_mid - zero.velocity) / displacement * quadratic
    return rising_root(curvature, zero.velocity * linear, zero.margin), velocity_mid, curvature


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


def simulated_critical_lr(
    zero: StepZero, factors: list[float], optimizer: str, guess: float, level: float = 0.0
) -> float | None:
    """The smallest η whose simulated margin is above ``level`` after the last update (log
    bisection); None when no η up to 10^30 × ``guess`` gets there."""

    def reaches(eta: float) -> bool:
        return simulate_margins(zero, eta, factors, optimizer)[-1] > level

    low, high = guess / 1e3, guess * 1e3
    while reaches(low):  # as η → 0 the final margin tends to m_0 < level, so this ends
        low /= 1e3
    for _ in range(9):
        if reaches(high):
            break
        high *= 1e3
    else:
        return None
    for _ in range(60):
        middle = math.sqrt(low * high)
        low, high = (low, middle) if reaches(middle) else (middle, high)
        if high / low < 1 + 1e-6:
            break
    return high


@dataclass
class MarginModel:
    """One variant's predicted final margin m_T(η) at κ = 1 (a run at η with κ is m_T(κ·η))."""

    variant: str
    margin: float  # m_0
    linear: float  # A·Σ s_t
    quadratic: float = 0.0  # two-point: G·Σ s_t P_t
    zero: StepZero | None = None  # simulated: where the margin path starts
    factors: list[float] | None = None
    optimizer: str = "adamw"
    replay: ReplayResult | None = None  # replay: m_T read from its own replays

    def final(self, eta: float) -> float:
        if self.replay is not None:
            return self.replay.margin_at(eta)
        if self.variant == "simulated" and self.zero is not None and self.zero.logit_velocity is not None:
            return simulate_margins(self.zero, eta, self.factors, self.optimizer)[-1]
        return self.margin + eta * self.linear + eta * eta * self.quadratic

    def reaching(self, level: float) -> float | None:
        """The smallest η ≥ 0 whose final margin is at least ``level`` (0: m_0 already is); None
        when the model says no η gets there."""
        if self.margin >= level:
            return 0.0
        if self.linear <= 0:
            return None  # the first update moves the margin down
        if self.replay is not None:
            guess = rising_root(self.quadratic, self.linear, self.margin - level) or self.replay.eta_c
            return self.replay.reaching(level, guess)
        if self.variant == "simulated" and self.zero is not None and self.zero.logit_velocity is not None:
            guess = (level - self.margin) / self.linear
            return simulated_critical_lr(self.zero, self.factors, self.optimizer, guess, level)
        return rising_root(self.quadratic, self.linear, self.margin - level)


@dataclass
class Measured:
    """Step-zero measurements and the κ = 1 prediction of every variant."""

    zero: StepZero
    first_order: float | None
    simulated: float | None
    two_point: float | None
    velocity_mid: float | None
    quadratic: float | None  # the two-point model's η² coefficient
    passes: dict[str, int]  # the closed forms'
    replay: ReplayResult | None = None
    replayer: Replayer | None = None

    def total_passes(self) -> dict[str, int]:
        """Every pass spent so far, the replays' included (the recommended LR's among them)."""
        extra = self.replayer.passes if self.replayer else {}
        return {k: v + extra.get(k, 0) for k, v in self.passes.items()}

    def eta1(self, variant: str) -> float | None:
        replay = self.replay.eta_c if self.replay else (0.0 if self.first_order == 0.0 else None)
        return {
            "first-order": self.first_order,
            "simulated": self.simulated,
            "two-point": self.two_point,
            "replay": replay,
        }[variant]

    def model(self, variant: str, factors: list[float], optimizer: str) -> MarginModel:
        linear = self.zero.velocity * sum(factors)
        quadratic = (self.quadratic or 0.0) if variant == "two-point" else 0.0
        if variant == "replay" and self.replay and self.replay.eta_c:
            # The quadratic through m_0 with its slope and through the replay's root: where the
            # replays that find the recommended LR start.
            root = self.replay.eta_c
            quadratic = -(self.zero.margin + linear * root) / (root * root)
        zero = self.zero if variant == "simulated" else None
        replay = self.replay if variant == "replay" and self.replay and self.replay.eta_c else None
        return MarginModel(variant, self.zero.margin, linear, quadratic, zero, factors, optimizer, replay)


@dataclass
class _Request:
    """What the caller asked for, beside the run's settings."""

    kappa: float | None
    calibration: str | Path | dict | bool | None  # None (or True): the shipped one; False: none
    variant: str | None  # None: DEFAULT_VARIANT (first-order for a fact of several tokens)
    factors: list[float] | None  # an explicit schedule (peak 1)
    curve: bool
    refreshes: int = DEFAULT_REFRESHES

    def kappa_for(self, config: RunConfig, variant: str) -> KappaChoice:
        shipped = self.calibration is None or self.calibration is True
        calibration = None if isinstance(self.calibration, bool) else self.calibration
        return choose_kappa(self.kappa, calibration, config, variant, shipped=shipped, factors=self.factors)


def checked_refreshes(refreshes) -> int:
    """K, the replay's gradient measurements: a whole number from 0 (no replay) to MAX_STEPS;
    None: the default."""
    if refreshes is None:
        return DEFAULT_REFRESHES
    original = refreshes
    try:
        refreshes = operator.index(refreshes)  # numpy integers too, not floats or bools
    except TypeError:
        refreshes = None
    if isinstance(original, bool) or refreshes is None or not 0 <= refreshes <= MAX_STEPS:
        raise PhantomLensError(
            f"refreshes must be a whole number from 0 (no replay) to {MAX_STEPS:,}, got {original!r}"
        )
    return refreshes


def explicit_factors(factors: Sequence[float] | None) -> list[float] | None:
    """A caller's per-step LR factors, checked, scaled to peak 1 (η is then the peak LR)."""
    if factors is None:
        return None
    try:
        values = [float(f) for f in factors]
    except (TypeError, ValueError):
        raise PhantomLensError("factors must be a list of numbers, one LR factor per step") from None
    if not 1 <= len(values) <= MAX_STEPS:
        raise PhantomLensError(f"factors must hold 1 to {MAX_STEPS:,} steps, got {len(values)}")
    if not all(math.isfinite(v) and v >= 0 for v in values) or max(values) <= 0:
        raise PhantomLensError("factors must be finite, non-negative LR factors, not all 0")
    peak = max(values)
    return [v / peak for v in values]


def predict_critical_lr(
    config=None,
    *,
    model=None,
    tokenizer=None,
    kappa: float | None = None,
    calibration: str | Path | dict | bool | None = None,
    variant: str | None = None,
    factors: Sequence[float] | None = None,
    curve: bool = False,
    refreshes: int | None = DEFAULT_REFRESHES,
    **overrides,
) -> Prediction:
    """η̂_c for the run ``config`` would make (same settings and defaults as ``finetune``), its
    interval, and the recommended LR (the smallest whose predicted final margin ≥ margin_safe, with κ
    at the low end of its spread).

    ``variant``: first-order, simulated, two-point or replay (all are computed; ``eta_c`` is the chosen one
    divided by its κ); None picks ``DEFAULT_VARIANT`` (first-order for a fact of several tokens,
    or when two-point has no root). ``calibration``: None uses the shipped calibration, a file or
    dict a calibration of yours, False none; either applies κ only inside the domain it was fitted
    on (else κ = 1, said in ``kappa_note``). ``kappa`` gives κ directly. ``factors``: the per-step
    LR factors of the run's own schedule (e.g. a trainer's scheduler), instead of ``schedule`` and
    ``steps`` (T = len(factors); scaled to peak 1, so η is the peak LR). ``curve``: also sample the
    predicted final margin over LRs (``margin_curve``, what ``plot.prediction_figure`` draws).
    ``refreshes``: K, the gradients the replay measures (``phantomlens.replay``; None: the default,
    0: no replay). Each replayed LR also costs T optimiser steps on the trainable parameters.
    """
    if variant is not None and variant not in VARIANTS:
        raise PhantomLensError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    config = (config or RunConfig()).replace(**overrides)
    request = _Request(
        kappa, calibration, variant, explicit_factors(factors), curve, checked_refreshes(refreshes)
    )
    if variant == "replay" and request.refreshes == 0:
        raise PhantomLensError("the replay variant needs refreshes ≥ 1 (0 skips the replay)")
    if request.factors is not None:
        config = config.replace(steps=len(request.factors))
    if config.facts is not None:
        raise PhantomLensError(
            "predict_critical_lr predicts one context; for a fact file use phantomlens.predict_facts "
            "(phantomlens predict --facts FILE)"
        )
    request.kappa_for(config, variant or DEFAULT_VARIANT)  # a bad κ or calibration fails before loading
    config, model, tokenizer = load_for_run(config, model, tokenizer, {})
    from phantomlens.facttrain import single_fact

    schedule = request.factors or schedule_factors(config.steps, config.schedule, config.warmup_fraction)
    fact = single_fact(config, tokenizer)
    if fact is not None:
        return _predict_fact(config, model, tokenizer, fact, request, schedule)
    return _predict_context(config, model, tokenizer, request, schedule)


BF16_NOTE = (
    "bf16: step 0 is measured as the bf16 run sees it, but the step model is fp32 arithmetic: the "
    "rounding of bf16 forwards over the run is not modelled, and the calibration was fitted in fp32"
)


def precision_note(config: RunConfig) -> str | None:
    return BF16_NOTE if config.precision == "bf16" else None


def _predict_context(config, model, tokenizer, request: _Request, schedule: list[float]) -> Prediction:
    """A single-token context: every variant measured, the chosen one the headline."""
    spec = resolve_run_context(config, tokenizer, model)
    measured = _measure(model, config, spec, schedule, request.refreshes)
    chosen, note = _final_variant(request.variant, measured)
    margin_model = measured.model(chosen, schedule, config.optimizer)
    replayed = margin_model.replay
    with mixed_precision(replayed.replayer.model, config.precision) if replayed else contextlib.nullcontext():
        headline = _headline(request, config, margin_model, measured.eta1(chosen))
    prediction = Prediction(
        **headline,
        **_run_fields(config, request, schedule),
        variant=chosen,
        variant_note=note,
        precision_note=precision_note(config),
        eta_c_first_order=measured.first_order,
        eta_c_simulated=measured.simulated,
        eta_c_two_point=measured.two_point,
        margin_velocity_mid=measured.velocity_mid,
        two_point_quadratic=measured.quadratic,
        eta_c_replay=measured.replay and measured.replay.eta_c,
        replay_refreshes=measured.replay and measured.replay.refreshes,
        replay_points=measured.replay and [list(point) for point in measured.replay.points],
        margin_initial=measured.zero.margin,
        margin_velocity=measured.zero.velocity,
        passes=measured.total_passes(),
        context={"text": spec.text, "target": spec.target, "competitor": spec.competitor},
    )
    if prediction.replay_refreshes:
        prediction.replay_optimizer_steps = prediction.replays_run() * config.steps
    return prediction


#: Why a variant can have no answer where first-order has one.
NO_ANSWER = {
    "two-point": "in its model the margin velocity decays before the flip",
    "replay": "the replay was skipped (refreshes = 0) or found no root",
    "simulated": "its simulated margin never reaches 0",
}


def _final_variant(asked: str | None, measured: Measured) -> tuple[str, str | None]:
    """The headline's variant, and why it is not the one asked for (or has no answer)."""
    chosen = asked or DEFAULT_VARIANT
    if measured.first_order is None or measured.eta1(chosen) is not None:
        return chosen, None  # with no first-order answer (A ≤ 0) no variant has one
    why = NO_ANSWER.get(chosen, "")
    if asked is not None:
        return chosen, f"{chosen} has no root here ({why})"
    fallback = next(v for v in FALLBACK_VARIANTS if measured.eta1(v) is not None)
    return fallback, (
        f"{chosen} (the default) has no root here: {why}; the headline falls back to {fallback}"
    )


def _run_fields(config: RunConfig, request: _Request, schedule: list[float]) -> dict:
    explicit = request.factors is not None
    return {
        "mode": config.mode,
        "optimizer": config.optimizer,
        "steps": config.steps,
        "schedule": "explicit" if explicit else config.schedule,
        "warmup_fraction": None if explicit else config.warmup_fraction,
        "schedule_sum": sum(schedule),
        "model": config.model,
    }


def _headline(
    request: _Request, config: RunConfig, model: MarginModel, eta1: float | None, kappa=None
) -> dict:
    """η̂_c with its interval, κ and where it came from, and the recommended LR (``kappa``: a
    KappaChoice already made, else the request's for the model's variant)."""
    if kappa is None:
        try:
            kappa = request.kappa_for(config, model.variant)
        except PhantomLensError as exc:  # a fallback variant the user's calibration lacks
            kappa = KappaChoice(1.0, "uncalibrated", None, f"{exc}: κ = 1, uncalibrated")
    eta = None if eta1 is None else eta1 / kappa.value
    sigma = kappa.log_std
    safe = config.stop.margin_safe
    reach = model.reaching(safe)
    # Robust to κ's spread: the margin must reach margin_safe even with κ at the low end of its
    # measured spread (κ·e^−σ). Checked on the stored sweeps, κ's central value alone left the run
    # short of margin_safe in about half the contexts.
    recommended = None if reach is None else reach / kappa.value * math.exp(sigma or 0.0)
    return {
        "eta_c": eta,
        "eta_c_low": None if eta is None or sigma is None else eta * math.exp(-sigma),
        "eta_c_high": None if eta is None or sigma is None else eta * math.exp(sigma),
        "kappa": kappa.value,
        "kappa_source": kappa.source,
        "kappa_log_std": sigma,
        "kappa_note": kappa.note,
        "margin_safe": safe,
        "eta_recommended": recommended,
        "margin_curve": margin_curve(model, kappa.value, [eta, recommended], config)
        if request.curve
        else None,
    }


def margin_curve(model: MarginModel, kappa: float, marks: list[float | None], config: RunConfig) -> dict:
    """The predicted final margin at 61 LRs, log-spaced over 1.5 decades either side of ``marks``
    (η̂_c and the recommended LR; the mode's default LR when neither is positive); for the replay,
    15 replays over a factor 3 either side."""
    import numpy as np

    positive = [m for m in marks if m]
    low, high = (min(positive), max(positive)) if positive else (DEFAULT_LR[config.mode],) * 2
    # Each replayed point costs a forward and T optimiser steps, and its record holds near η̂_c only.
    span, count = (3, 15) if model.replay is not None else (30, 61)
    lrs = np.geomspace(low / span, high * span, count).tolist()
    return {"lr": lrs, "margin": [model.final(kappa * lr) for lr in lrs]}


FACT_VARIANT_NOTE = "a fact of several tokens (or a chat prompt) is predicted first-order, its only variant"


def _predict_fact(config, model, tokenizer, fact, request: _Request, schedule: list[float]) -> Prediction:
    """A single fact of several tokens (or a chat prompt): the first-order prediction on the
    sequence margin, the definition the fact-set prediction uses with N = 1."""
    from phantomlens.factpredict import measure_facts
    from phantomlens.facttrain import _tokenized

    if request.variant not in (None, "first-order"):
        raise PhantomLensError(
            f"the {request.variant} variant is defined for single-token contexts; a fact of several tokens "
            "(or a chat prompt) is predicted first-order: use --variant first-order"
        )
    tokenized = _tokenized(tokenizer, model, [fact])
    _, (record,) = measure_facts(model, config, tokenized, sum(schedule), 1.0)
    chosen = tokenized[0].fact
    kappa = None
    if request.calibration in (None, True) and request.kappa is None:
        note = "the shipped calibration was fitted on single-token contexts: κ = 1, uncalibrated"
        kappa = KappaChoice(1.0, "uncalibrated", None, note)
    linear = record.velocity_single * sum(schedule)
    margin_model = MarginModel("first-order", record.margin_initial, linear)
    return Prediction(
        **_headline(request, config, margin_model, record.eta_c_single, kappa),
        **_run_fields(config, request, schedule),
        variant="first-order",
        variant_note=None if request.variant else FACT_VARIANT_NOTE,
        precision_note=precision_note(config),
        eta_c_first_order=record.eta_c_single,
        eta_c_simulated=None,
        eta_c_two_point=None,
        margin_velocity_mid=None,
        margin_initial=record.margin_initial,
        margin_velocity=record.velocity_single,
        passes={"forward": 3, "backward": 3},
        context={
            "text": chosen.prompt,
            "target": chosen.target,
            "competitor": chosen.competitor,
            "chat": chosen.chat,
            "branch": tokenized[0].branch,
        },
    )


def _measure(model, config, spec, factors: list[float], refreshes: int = DEFAULT_REFRESHES) -> Measured:
    """Step-zero measurements and the κ = 1 predictions, on a private copy of the model
    (``refreshes`` = 0 skips the replay).

    LoRA injection, requires_grad changes and the probe steps must not touch the user's model,
    nor may the LoRA initialisation consume the caller's random numbers.
    """
    rng = torch.get_rng_state()
    try:
        probe = copy.deepcopy(model)
        for parameter in probe.parameters():
            parameter.grad = None
        torch.manual_seed(config.seed)  # the same LoRA initialisation the run would get
        from phantomlens.models import dependency_noise_off

        with dependency_noise_off():  # PEFT's deprecation notices are not the user's business
            probe = prepare_model(probe, config)
        probe.eval()
        replayer = _replayer(probe, config, spec, factors) if refreshes > 0 else None
        with torch.enable_grad(), mixed_precision(probe, config.precision):
            zero = step_zero(probe, spec.input_ids, spec.target_id, spec.competitor_id, config.optimizer)
            measured = Measured(zero, None, None, None, None, None, dict(PASSES["first-order"]))
            if zero.margin >= 0:
                measured.first_order = measured.simulated = measured.two_point = 0.0  # any LR keeps it
            elif zero.velocity > 0:
                _closed_forms(measured, probe, config, spec, factors)
                if replayer is not None:
                    _replay(measured, replayer, factors, refreshes)
        del probe, replayer
    finally:
        torch.set_rng_state(rng)
    return measured


def _closed_forms(measured: Measured, probe, config, spec, factors: list[float]) -> None:
    zero = measured.zero
    measured.passes = dict(PASSES["two-point"])  # b (one forward), then A re-measured half-way
    first_order = -zero.margin / (zero.velocity * sum(factors))
    measured.first_order = first_order
    measured.simulated = simulated_critical_lr(zero, factors, config.optimizer, first_order)
    measured.two_point, measured.velocity_mid, measured.quadratic = two_point_critical_lr(
        probe, spec.input_ids, zero, spec.competitor_id, factors, config.optimizer, first_order
    )


def _replayer(probe, config: RunConfig, spec, factors: list[float]) -> Replayer:
    """Taken before the step-zero probes move the weights, so that every replay starts exactly
    where the run would."""
    from phantomlens.session import make_optimizer

    def optimizer(params, lr):
        return make_optimizer(config.replace(lr=lr), params, fused=True)

    return Replayer(probe, spec.input_ids, spec.target_id, spec.competitor_id, factors, optimizer)


def _replay(measured: Measured, replayer: Replayer, factors: list[float], refreshes: int) -> None:
    """The replay from the two-point root (first-order where it has none)."""
    zero = measured.zero
    replayer.restore()  # undo the rounding of the step-zero probes' move and move back
    start = measured.two_point or measured.first_order
    slope = zero.velocity * sum(factors)
    measured.replay = replay_critical_lr(replayer, zero.loss_gradient, zero.margin, slope, start, refreshes)
    measured.replayer = replayer
