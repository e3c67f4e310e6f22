"""The replay prediction: the run itself, re-enacted with K gradient measurements instead of T.

A run's final margin m_T(η) is what its optimiser makes of T gradients. The replay takes those T
steps with the run's own optimiser (the torch AdamW or SGD the run builds, its betas, its schedule,
its bias correction) on the trainable parameters of a private copy, but measures the loss gradient
at only K of the steps (one forward and one backward each). Between measurements the gradient is
extrapolated linearly in the distance travelled, τ_t = η·P_t with P_t = Σ_{k<t} s_k, from the last
two measurements. With K = T the replay is the run, step for step. Once all K are measured, the
margins the search compares come from replays that interpolate between them (one forward each).

This is what the closed-form variants cannot see: under LoRA the adapters' A matrices get no
gradient while B = 0, then Adam's normalisation moves them at full speed from the second step on,
and B's own speed then grows with A's displacement; Adam's step shrinks where gradients change sign;
the schedule's tail weighs late gradients less. The replay has all of it, because it runs Adam.

Root-finding needs no further gradients. Adam's step is about η·s_t per parameter whatever the
gradient's size, so a run's path depends on η mostly through the distance τ: the gradients recorded
at one LR η₁ are read at the same τ for a nearby η, and each further η costs one forward pass (its
final margin). The search starts from the quadratic through m_0, its slope A·Σ s_t and m_T(η₁), then
takes secant steps in ln η.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from phantomlens.forward import last_token_logits
from phantomlens.results import DEFAULT_REFRESHES  # K: 20 passes in all with the two-point start

#: Told the optimiser steps of each finished replay (the CLI's progress bar); nothing by default.
REPLAY_PROGRESS: contextvars.ContextVar[Callable[[int], object] | None] = contextvars.ContextVar(
    "replay_progress", default=None
)

SECANT_STEPS = 2
#: A root this far (as a factor) from the LR whose gradients were recorded gets a second measured
#: replay there: the recorded path is then too unlike the root's own.
REMEASURE_FACTOR = 1.5
#: At most this many measured replays: a start far from the root walks to it in trusted steps.
MEASURED_REPLAYS = 3
#: Recorded gradients are kept in the parameters' dtype up to this many bytes, in bfloat16 beyond
#: (a full fine-tune of a large model would otherwise hold K copies of its weights).
RECORD_BUDGET_BYTES = 2 * 1024**3


def refresh_steps(factors: list[float], refreshes: int) -> list[int]:
    """The steps whose gradient is measured: 0 and 1, then evenly spaced in distance travelled.

    Step 1 is always measured because the first update can change the gradient's shape, not only
    its size (under LoRA, A's gradient is 0 until B has moved)."""
    steps = len(factors)
    if refreshes >= steps:
        return list(range(steps))
    prefix = distances(factors)
    chosen = {0, 1} if refreshes >= 2 else {0}
    extra = refreshes - len(chosen)
    for j in range(1, extra + 1):
        goal = prefix[-1] * j / (extra + 1)
        chosen.add(max(2, min(range(steps), key=lambda t: abs(prefix[t] - goal))))
    return sorted(chosen)


def distances(factors: list[float]) -> list[float]:
    """P_t = Σ_{k<t} s_k: how far (per unit LR) a run has travelled before step t."""
    prefix, total = [], 0.0
    for factor in factors:
        prefix.append(total)
        total += factor
    return prefix


@dataclass
class GradientRecord:
    """Loss gradients measured along one replay, at increasing distance τ."""

    taus: list[float] = field(default_factory=list)
    grads: list[list[torch.Tensor]] = field(default_factory=list)

    def add(self, tau: float, grads: list[torch.Tensor], dtype: torch.dtype) -> None:
        self.taus.append(tau)
        self.grads.append([g.detach().to(dtype) for g in grads])

    def write_into(self, tau: float, buffers: list[torch.Tensor]) -> None:
        """The gradient at τ (as ``at``) written into ``buffers``: one pass over memory, no
        temporaries (a replay of a full fine-tune spends most of its time here and in Adam)."""
        low, high, weight = self._segment(tau)
        for buffer, a, b in zip(buffers, self.grads[low], self.grads[high], strict=True):
            if weight == 0.0:
                buffer.copy_(a)
            elif a.dtype == buffer.dtype:
                torch.lerp(a, b, weight, out=buffer)
            else:
                buffer.copy_(torch.lerp(a, b, weight))

    def _segment(self, tau: float) -> tuple[int, int, float]:
        """(i, j, w): the gradient at τ is g_i + w·(g_j − g_i)."""
        if len(self.taus) == 1:
            return 0, 0, 0.0
        j = 1
        while j < len(self.taus) - 1 and self.taus[j] < tau:
            j += 1
        t0, t1 = self.taus[j - 1], self.taus[j]
        if t1 <= t0:
            return j, j, 0.0
        return j - 1, j, (tau - t0) / (t1 - t0)

    def at(self, tau: float) -> list[torch.Tensor]:
        """The gradient at τ: linear between the two measurements around it, extrapolated past the
        last two (held while there is one). While a replay is still measuring, the last two are the
        latest it has; a replay from a finished record interpolates between measurements."""
        low, high, weight = self._segment(tau)
        return [torch.lerp(a, b, weight) for a, b in zip(self.grads[low], self.grads[high], strict=True)]


@dataclass
class Replayer:
    """Replays the run on ``model``'s trainable parameters, restoring them after every replay."""

    model: torch.nn.Module
    input_ids: torch.Tensor
    target_id: int
    competitor_id: int
    factors: list[float]
    make_optimizer: object  # callable(params, lr) -> torch.optim.Optimizer, as the run builds it
    passes: dict[str, int] = field(default_factory=lambda: {"forward": 0, "backward": 0})

    def __post_init__(self) -> None:
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.initial = [p.detach().clone() for p in self.params]

    def loss_gradient(self) -> list[torch.Tensor]:
        logits = last_token_logits(self.model, self.input_ids)
        target = torch.tensor([self.target_id], device=logits.device)
        loss = torch.nn.functional.cross_entropy(logits.float().unsqueeze(0), target)
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        self.passes["forward"] += 1
        self.passes["backward"] += 1
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]

    def final_margin(
        self, eta: float, record: GradientRecord, measure_at: list[int] | None = None, final: bool = True
    ) -> float | None:
        """m_T after the T steps at peak LR ``eta``. With ``measure_at``, the gradient is measured
        at those steps (added to ``record``, which must then hold step 0's); else read from it.
        ``final=False`` skips the closing forward pass (and returns None): a replay run only to
        measure gradients."""
        prefix = distances(self.factors)
        dtype = self._record_dtype(len(measure_at or []))
        optimizer = self.make_optimizer(self.params, eta)
        buffers = [torch.empty_like(p) for p in self.params]
        try:
            with torch.enable_grad():
                for step, factor in enumerate(self.factors):
                    tau = eta * prefix[step]
                    if measure_at and step in measure_at and step > 0:
                        record.add(tau, self.loss_gradient(), dtype)
                    record.write_into(tau, buffers)
                    for parameter, buffer in zip(self.params, buffers, strict=True):
                        parameter.grad = buffer
                    for group in optimizer.param_groups:
                        group["lr"] = eta * factor
                    optimizer.step()
            progress = REPLAY_PROGRESS.get()
            if progress is not None:
                progress(len(self.factors))
            if not final:
                return None
            with torch.no_grad():
                logits = last_token_logits(self.model, self.input_ids)
            self.passes["forward"] += 1
            return float(logits[self.target_id] - logits[self.competitor_id])
        finally:
            self.restore()

    def restore(self) -> None:
        with torch.no_grad():
            for parameter, value in zip(self.params, self.initial, strict=True):
                parameter.copy_(value)
                parameter.grad = None

    def _record_dtype(self, measurements: int) -> torch.dtype:
        dtype = self.params[0].dtype if self.params else torch.float32
        size = sum(p.numel() for p in self.params) * torch.finfo(dtype).bits // 8
        return torch.bfloat16 if size * (measurements + 1) > RECORD_BUDGET_BYTES else dtype


@dataclass
class ReplayResult:
    eta_c: float | None  # κ = 1
    eta_start: float  # η₁, where the gradients were measured
    margin_start: float  # m_T(η₁)
    refreshes: int
    points: list[tuple[float, float, bool]]  # (η, m_T, gradients measured) of every replay, in order
    replayer: Replayer | None = None
    record: GradientRecord | None = None  # the last measured one: what further replays read

    def margin_at(self, eta: float) -> float:
        """m_T(η) replayed from the last record (one forward pass and T optimiser steps)."""
        return self.replayer.final_margin(eta, self.record)

    def reaching(self, level: float, guess: float, steps: int = 4) -> float | None:
        """The LR whose replayed m_T is ``level``: secant steps in ln η from ``guess`` (each one
        replay), anchored at the root (m_T = 0 at η̂_c); None when the replays stay level."""
        points = [(self.eta_c, -level), (guess, self.margin_at(guess) - level)]
        for _ in range(steps):
            step = _secant(points[-2], points[-1])
            if step is None:
                return None
            if abs(math.log(step / points[-1][0])) < 1e-3:
                return step
            points.append((step, self.margin_at(step) - level))
        return points[-1][0]


def replay_critical_lr(
    replayer: Replayer,
    grad_zero: list[torch.Tensor],
    margin: float,
    slope: float,
    eta_start: float,
    refreshes: int = DEFAULT_REFRESHES,
    secant_steps: int = SECANT_STEPS,
) -> ReplayResult:
    """η̂_c (κ = 1) from a replay at ``eta_start`` measuring ``refreshes`` gradients, then secant
    steps on replays from that record, kept within ``REMEASURE_FACTOR`` of where the gradients were
    measured (a record describes its own path, and a nearby LR's). A root outside that trust region
    gets another measured replay (up to ``MEASURED_REPLAYS``), at the estimate from the measured
    margins alone, and the secant again. ``margin``, ``slope``: m_0 and dm_T/dη at 0 (A·Σ s_t)."""
    points: list[tuple[float, float, bool]] = []
    eta, guess = eta_start, eta_start
    for stage in range(MEASURED_REPLAYS):
        record = GradientRecord()
        record.add(0.0, grad_zero, replayer._record_dtype(refreshes))
        replayer.final_margin(eta, record, refresh_steps(replayer.factors, refreshes), final=False)
        points.append((eta, replayer.final_margin(eta, record), True))
        guess = _measured_guess(margin, slope, [p for p in points if p[2]]) or eta
        last = stage == MEASURED_REPLAYS - 1
        if not last and not _trusted(guess, eta):
            eta = guess  # measure again where the margins say the root is
            continue
        guess = _secant_on(replayer, record, points, _clamped(guess, eta), secant_steps, eta)
        if guess is None or _trusted(guess, eta, strict=True):
            break
        eta = guess
    used = min(refreshes, len(replayer.factors))  # at most every step's gradient
    if guess is None:
        return ReplayResult(None, eta_start, points[0][1], used, points)
    return ReplayResult(guess, eta_start, points[0][1], used, points, replayer, record)


def _measured_guess(margin: float, slope: float, measured: list[tuple]) -> float | None:
    """The root from measured replays only: secant in ln η between the last two when there are two,
    else the quadratic through m_0 (with its slope) and the one.

    Two measured replays whose margins fall as η rises contradict each other (m_T rises with η below
    divergence), and a secant through them walks away from the root; then the quadratic through m_0
    and the one measured nearest η = 0, whose path strays least from the first step's, decides."""
    if len(measured) >= 2:
        (eta_a, m_a), (eta_b, m_b) = measured[-2][:2], measured[-1][:2]
        if (eta_b - eta_a) * (m_b - m_a) > 0:
            return _secant(measured[-2], measured[-1])
        measured = [min(measured, key=lambda point: point[0])]
    eta, value = measured[-1][:2]
    return _quadratic_root(margin, slope, eta, value)


def _trusted(guess: float | None, eta: float, strict: bool = False) -> bool:
    """Whether ``guess`` lies inside the trust region around the measured ``eta`` (strictly: not on
    its edge, where a clamped secant step stops)."""
    if guess is None:
        return True
    low, high = eta / REMEASURE_FACTOR, eta * REMEASURE_FACTOR
    return low * (1 + 1e-9) < guess < high * (1 - 1e-9) if strict else low <= guess <= high


def _clamped(guess: float, eta: float) -> float:
    return min(max(guess, eta / REMEASURE_FACTOR), eta * REMEASURE_FACTOR)


def _secant_on(
    replayer: Replayer, record: GradientRecord, points: list, guess: float, steps: int, eta: float
) -> float:
    """``steps`` secant steps in ln η, each replayed from ``record`` (one forward pass), kept in the
    trust region around ``eta``."""
    for _ in range(steps):
        points.append((guess, replayer.final_margin(guess, record), False))
        step = _secant(points[-2], points[-1])
        if step is None:  # the replays are level: the margin does not move with η here
            return None if points[-1][1] < 0 else guess
        if _clamped(step, eta) == guess:  # pinned at the trust region's edge
            return guess
        guess = _clamped(step, eta)
    return guess


def _quadratic_root(margin: float, slope: float, eta: float, value: float) -> float | None:
    curvature = (value - margin - slope * eta) / (eta * eta)
    return rising_root(curvature, slope, margin)


def rising_root(a: float, b: float, c: float) -> float | None:
    """The smallest η > 0 at which c + b·η + a·η² (c < 0) rises through 0; None if it never does."""
    if abs(a) < 1e-300:
        return -c / b if b > 0 else None
    discriminant = b * b - 4 * a * c
    if discriminant < 0:
        return None
    root = (-b + math.sqrt(discriminant)) / (2 * a)
    return root if root > 0 else None


def _secant(a: tuple, b: tuple) -> float | None:
    """The next η of a secant step in ln η through two (η, m_T, …) points; None when they are level."""
    (x0, y0), (x1, y1) = a[:2], b[:2]
    if y1 == y0 or x0 <= 0 or x1 <= 0:
        return None
    log_eta = math.log(x1) - y1 * (math.log(x1) - math.log(x0)) / (y1 - y0)
    step = log_eta - math.log(x1)
    return math.exp(math.log(x1) + max(-2.0, min(2.0, step)))  # at most e² per step
