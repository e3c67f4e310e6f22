"""Where a critical-LR search runs next: a pure function of the runs it has (docs/critical-lr.md).

η_c is the smallest peak LR whose run ends in ``success``, bracketed from below by the highest
run under it that did not; the search stops when that bracket's high/low is ≤ 1 + tolerance, so
both ends of the answer are runs. Two searches reach that bracket:

- ``bisect`` reads only each run's verdict: multiply or divide the LR by ``factor`` until the
  verdict changes, then halve the bracket in log-LR (about ten runs from a good start);
- ``root`` (the default) reads each run's final margin m_T(η) as well, a continuous function
  whose zero is η_c, and root-finds it in x = ln η on the gain y = ln((m_T − m_0)/(−m_0)) (m_0:
  the margin before training), which has the margin's sign and is close to linear in x wherever
  m_T − m_0 grows as a power of η. It extrapolates from the runs until the verdict changes (from
  the start alone: m_T linear in η from m_0 at η = 0), then interpolates (a parabola through the
  three runs nearest the bracket, else a secant). Each run goes where the estimated root is, or
  one tolerance from a bracket end when the root lies within that, so that the run closes the
  bracket: about four runs from a prediction within a factor of three. A diverged run, or one
  without a finite margin, counts as "too high" and carries no margin. Wherever interpolation is
  poor (no estimate inside the bracket, the margins and the gains disagreeing, the margin not
  halving from one side) it takes a bisection step instead; a bracket ≤ 2 tolerances wide is
  halved, which ends the search whatever the run's verdict.

The divergence limit η_max, the smallest LR that diverges, is bisected by both. Nothing here
remembers anything: the runs are the state, so a killed sweep resumes by replaying its records and
proposes exactly what it would have, and ``replay`` recovers how many runs the search used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

from phantomlens.results import DIVERGED, SUCCESS
from phantomlens.settings import SweepConfig

__all__ = ["Plan", "Point", "lr_key", "plan", "replay"]

#: The share of the tolerance a closing pair of runs spans, so that rounding an LR to its key
#: (10 significant digits) never leaves the final bracket above 1 + tolerance.
SPAN = 0.98


#: The slope of y = ln((m_T − m_0)/(−m_0)) in ln η assumed from a single run: 1, m_T linear in η
#: from m_0 at η = 0 (the stored sweeps' slopes lie between about 0.5 and 1.6).
SLOPE = 1.0


#: Runs within this many spans behind the edge of a one-sided search count as falling short.
CREEP = 16


def lr_key(lr: float) -> float:
    """LRs are compared and named at 10 significant digits, so replays hit the same records."""
    return float(f"{lr:.10g}")


@dataclass(frozen=True)
class Point:
    """What a search knows of one finished run: its verdict and, when usable, its final margin."""

    verdict: str
    margin: float | None = None  # m_T; None for a diverged run or a non-finite margin
    margin_initial: float | None = None  # m_0, the margin before training: m_T as η → 0

    @classmethod
    def of(cls, record) -> Point:
        """The point of a ``SweepRunRecord``."""
        final, initial = record.margin_final, record.margin_initial
        usable = record.verdict != DIVERGED and final is not None and math.isfinite(final)
        return cls(
            verdict=record.verdict,
            margin=float(final) if usable else None,
            margin_initial=float(initial) if initial is not None and math.isfinite(initial) else None,
        )


#: A search's input: each run's LR (as ``lr_key`` names it) with its verdict, or its ``Point``.
Runs = Mapping[float, "str | Point"]


@dataclass
class Plan:
    """The search's next run (``next_lr``), or, once it is None, its answer."""

    next_lr: float | None
    eta_c: float | None = None
    bracket_low: float | None = None
    bracket_high: float | None = None
    eta_max: float | None = None
    eta_max_low: float | None = None
    note: str = ""


def plan(records: Runs, start: float, config: SweepConfig) -> Plan:
    """The next LR to run, or the result when the search is complete (pure: replayable)."""
    if not records:
        return Plan(next_lr=lr_key(start))
    points = {lr: p if isinstance(p, Point) else Point(p) for lr, p in records.items()}
    search = (_RootSearch if config.search == "root" else _Search)(points, config)
    found = search.eta_c()
    if found.next_lr is not None:
        return found
    return search.eta_max(found)


def replay(records: Runs, start: float, config: SweepConfig) -> int | None:
    """How many of ``records`` the η_c search of ``config`` used, replayed from ``start``; None when
    it is not complete, or the records are not its path (another search's, or another start's)."""
    config = config.replace(eta_max=False)
    used: dict[float, str | Point] = {}
    while (lr := plan(used, start, config).next_lr) is not None:
        if lr not in records:
            return None
        used[lr] = records[lr]
    return len(used)


class _Search:
    """Bisection: the two phases of ``plan`` over one set of runs, reading only their verdicts."""

    def __init__(self, points: dict[float, Point], config: SweepConfig) -> None:
        self.points, self.config = points, config
        self.records = {lr: p.verdict for lr, p in points.items()}
        self.tried = sorted(points)
        self.success = [lr for lr in self.tried if self.records[lr] == SUCCESS]
        self.diverged = [lr for lr in self.tried if self.records[lr] == DIVERGED]
        self.ratio = 1 + config.tolerance

    def propose(self, lr: float) -> float | None:
        lr = lr_key(lr)
        if lr in self.records or not (self.config.min_lr <= lr <= self.config.max_lr):
            return None
        return lr

    def middle(self, low: float, high: float) -> float | None:
        """The geometric midpoint of a bracket still wider than the tolerance, if it can be tried."""
        return self.propose(math.sqrt(low * high)) if high / low > self.ratio else None

    def narrow(self, low: float, high: float) -> float | None:
        """The next run inside the η_c bracket (None: it is within the tolerance)."""
        return self.middle(low, high)

    def up(self) -> float | None:
        """The next run when every run so far failed: above them all."""
        return self.propose(self.tried[-1] * self.config.factor)

    def down(self, lowest: float) -> float | None:
        """The next run when nothing was run below ``lowest``, a success or a divergence."""
        return self.propose(lowest / self.config.factor)

    def below(self, lr: float) -> list[float]:
        return [x for x in self.tried if x < lr]

    def eta_c(self) -> Plan:
        """Phase 1: η_c, the lowest success, bracketed from below by the highest non-success under it."""
        config, result = self.config, Plan(next_lr=None)
        if self.success:
            high = self.success[0]
            below = self.below(high)
            if not below:
                if (nxt := self.down(high)) is not None:
                    return Plan(next_lr=nxt)
                result.note = f"succeeds at the lowest LR allowed ({config.min_lr:g})"
                result.eta_c, result.bracket_high = high, high
                return result
            if (nxt := self.narrow(below[-1], high)) is not None:
                return Plan(next_lr=nxt)
            result.eta_c, result.bracket_low, result.bracket_high = high, below[-1], high
        elif self.diverged:
            below = self.below(self.diverged[0])
            if not below:
                if (nxt := self.down(self.diverged[0])) is not None:
                    return Plan(next_lr=nxt)
                result.note = "diverges at the lowest LR allowed"
            elif (nxt := self.narrow(below[-1], self.diverged[0])) is not None:
                return Plan(next_lr=nxt)  # is there a success between failing and diverging?
            else:
                result.note = "no LR below the divergence limit flips within T"
        elif (nxt := self.up()) is not None:
            return Plan(next_lr=nxt)
        else:
            result.note = f"no success up to the highest LR allowed ({config.max_lr:g})"
        return result

    def eta_max(self, result: Plan) -> Plan:
        """Phase 2: η_max, the lowest divergence, bracketed by the highest non-diverged run under it."""
        config = self.config
        if self.diverged:
            first = self.diverged[0]
            below = self.below(first)
            if below and config.eta_max:
                if (nxt := self.middle(below[-1], first)) is not None:
                    return Plan(next_lr=nxt, **_fields(result))
                result.eta_max_low = below[-1]
            result.eta_max = first
        elif config.eta_max and result.eta_c is not None:
            if (nxt := self.propose(self.tried[-1] * config.factor)) is not None:
                return Plan(next_lr=nxt, **_fields(result))
            result.note = (
                result.note + "; " if result.note else ""
            ) + f"no divergence up to {config.max_lr:g}"
        return result


def _fields(result: Plan) -> dict:
    return {k: v for k, v in vars(result).items() if k != "next_lr"}


class _RootSearch(_Search):
    """Root-finding on the final margin in x = ln η; the same phases, ends and notes as bisection.

    Where the margins say nothing (no margins at all, or none on the useful side) every step is the
    bisection's own, so without margins this search is the bisection."""

    def __init__(self, points: dict[float, Point], config: SweepConfig) -> None:
        super().__init__(points, config)
        # Every run of a subject starts from the same m_0; the lowest LR's is taken, so that the
        # order the records are read in cannot change it.
        initial = [p.margin_initial for _, p in sorted(points.items()) if p.margin_initial is not None]
        self.m0 = initial[0] if initial and initial[0] < 0 else None
        runs = [(math.log(lr), p.margin) for lr, p in sorted(points.items()) if p.margin is not None]
        self.raw = runs  # (ln η, m_T)
        self.margins = [(x, y) for x, m in runs if (y := self._gain(m)) is not None]  # (ln η, y)
        self.span = SPAN * math.log(self.ratio)  # the widest closing pair, in ln η
        self.reach = math.log(config.factor)  # the longest extrapolation, in ln η

    def _gain(self, margin: float) -> float | None:
        """The margin as the search fits it: y = ln((m_T − m_0)/(−m_0)), which has the margin's sign
        and is close to linear in ln η wherever m_T − m_0 grows as a power of η; the margin itself
        without m_0 < 0, and None (unusable) for a run that lowered the margin."""
        if self.m0 is None:
            return margin
        return math.log1p(-margin / self.m0) if margin > self.m0 else None

    def narrow(self, low: float, high: float) -> float | None:
        if high / low <= self.ratio:
            return None
        a, b = math.log(low), math.log(high)
        if b - a <= 2 * self.span:
            return self.middle(low, high)  # the midpoint closes a bracket this narrow either way
        if self._stalled(a, b):
            return self.middle(low, high)
        root = self._estimate(a, b)
        if root is None or not a <= root <= b:  # a run can land on the root: m_T = 0, not flipped
            return self.middle(low, high)
        if self.m0 is not None and abs(root - (_root_near(self.raw, a, b) or root)) > (b - a) / 4:
            # The margins and their gains disagree on where the root is: neither can be trusted
            # (a knife edge, where the margins far from η_c are all ±the same), so bisect.
            return self.middle(low, high)
        return self.propose(math.exp(self._aim(root, a, b))) or self.middle(low, high)

    def _aim(self, root: float, a: float, b: float) -> float:
        """Where to run inside (a, b) given the root estimate: one span from an end, which closes
        the bracket if the root lies on the far side of it with a quarter span to spare; else the
        estimate itself, the run that lands nearest the root whichever side it falls on (so that
        the next run closes the bracket from it)."""
        closing = [(root - (b - self.span), b - self.span), ((a + self.span) - root, a + self.span)]
        room, x = max(closing)
        return x if room >= self.span / 4 else root

    def _stalled(self, a: float, b: float) -> bool:
        """Brent's safeguard, read off the runs: the bracket's last two moves from one side (runs
        within its width outside that end) did not halve the margin there (each new end's |m_T|
        above half the one before it), so interpolation is creeping in from that side (a knife
        edge, a margin stuck far from 0)."""
        width = b - a
        below = [abs(m) for x, m in self.raw if a - width <= x <= a][::-1][:3]
        above = [abs(m) for x, m in self.raw if b <= x <= b + width][:3]
        return any(
            len(side) == 3 and all(near > far / 2 for near, far in pairwise(side)) for side in (below, above)
        )

    def _estimate(self, a: float, b: float) -> float | None:
        """The root of the gain in ln η from the runs nearest the bracket [a, b]; from a single run,
        the power law m_T − m_0 ∝ η^SLOPE through it."""
        if len(self.margins) == 1 and self.m0 is not None:
            x, y = self.margins[0]
            return x - y / SLOPE
        return _root_near(self.margins, a, b)

    def up(self) -> float | None:
        return self._beyond(math.log(self.tried[-1]), +1) or super().up()

    def down(self, lowest: float) -> float | None:
        return self._beyond(math.log(lowest), -1) or super().down(lowest)

    def _beyond(self, edge: float, direction: int) -> float | None:
        """The next run past ``edge`` (the outermost run, every run so far on one side of the root):
        one span out when the extrapolated root lies within three quarters of that (the run then
        closes the bracket), else half a span past the root, at most ``reach`` away; None without an
        estimate."""
        side = [p for p in self.margins if (p[1] <= 0) == (direction > 0)]
        root = self._estimate(edge, edge) if len(side) == len(self.margins) else None
        if root is None or (root - edge) * direction < -self.span:
            return None  # no estimate, or one the runs past it already contradict
        # Runs close behind the edge fell short: each quadruples the least overshoot, so an
        # estimate that keeps falling short (a margin creeping up to 0) cannot creep with it.
        xs = [math.log(lr) for lr in self.tried]
        short = sum(1 for x in xs if 0 < (edge - x) * direction <= CREEP * self.span)
        distance = max((root - edge) * direction, 0.0)
        if distance <= 0.75 * self.span and not short:
            step = self.span
        else:
            step = min(distance + self.span / 2 * 4**short, self.reach)
        limits = math.log(self.config.min_lr), math.log(self.config.max_lr)
        return self.propose(math.exp(min(max(edge + direction * step, limits[0]), limits[1])))


def _root_near(points: list[tuple[float, float]], a: float, b: float) -> float | None:
    """Where the (ln η, value) points cross zero near the bracket [a, b]: through the three points
    nearest it (a parabola, else a secant across the sign change), or, all of one sign, a secant
    through the two nearest the root."""
    near = sorted(sorted(points, key=lambda p: max(a - p[0], p[0] - b, 0.0))[:3])
    if not any(v <= 0 for _, v in near):
        return _secant(*near[:2]) if len(near) > 1 else None
    if not any(v > 0 for _, v in near):
        return _secant(*near[-2:]) if len(near) > 1 else None
    if len(near) == 3 and (root := _quadratic_root(near, a, b)) is not None:
        return root
    pair = next((p, q) for p, q in pairwise(near) if (p[1] <= 0) != (q[1] <= 0))
    return _secant(*pair)


def _secant(p: tuple[float, float], q: tuple[float, float]) -> float | None:
    """Where the line through two (ln η, m_T) points crosses zero (None: it does not rise)."""
    (x1, m1), (x2, m2) = p, q
    if x1 == x2 or (m2 - m1) / (x2 - x1) <= 0:
        return None
    return x1 - m1 * (x2 - x1) / (m2 - m1)


def _quadratic_root(points: list[tuple[float, float]], a: float, b: float) -> float | None:
    """The one zero in (a, b) of the parabola through three (ln η, m_T) points (Muller's step),
    in t = x − x₁ so that nearby LRs keep their digits; None unless exactly one lies there."""
    (x1, m1), (x2, m2), (x3, m3) = points
    d1 = (m2 - m1) / (x2 - x1)
    d2 = ((m3 - m2) / (x3 - x2) - d1) / (x3 - x1)
    slope = d1 - d2 * (x2 - x1)  # m = m1 + slope·t + d2·t²
    if d2 == 0:
        roots = [-m1 / slope] if slope else []
    else:
        disc = slope * slope - 4 * d2 * m1
        if disc < 0:
            return None
        q = -(slope + math.copysign(math.sqrt(disc), slope)) / 2
        roots = [q / d2, m1 / q] if q else [0.0]
    inside = [x1 + t for t in roots if a < x1 + t < b]
    return inside[0] if len(inside) == 1 else None
