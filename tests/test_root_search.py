"""The root search on the final margin (``SweepConfig.search = "root"``), driven by synthetic m_T(η).

No model runs here: each test hands ``plan`` the verdict and final margin a known curve gives at
the LR it proposes, as a sweep's records would, until the search ends.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import pytest

from phantomlens.lrsearch import Point, lr_key, plan, replay
from phantomlens.results import DIVERGED, FAILURE, SUCCESS
from phantomlens.settings import SweepConfig

ROOT = 1e-4  # η_c of every curve below
TOL = 0.01

#: A curve: the final margin at a peak LR, or None where the run diverges.
Curve = Callable[[float], float | None]


def power(eta: float, m0: float = -2.0, p: float = 1.6) -> float:
    """m_T − m_0 growing as a power of η (the shape of the stored SmolLM2 LoRA sweeps)."""
    return m0 - m0 * (eta / ROOT) ** p


def saturating(eta: float) -> float:
    """Concave in η: the gain levels off (the shape of the stored Gemma full sweeps, exaggerated)."""
    return -2.0 + 4.0 * (1 - math.exp(-math.log(2) * eta / ROOT))


def log_linear(eta: float) -> float:
    return 1.5 * math.log(eta / ROOT)


def sigmoid(eta: float) -> float:
    """A knife edge: the margin jumps from −1 to +1 within a few percent of η_c."""
    return math.tanh(40 * math.log(eta / ROOT))


def diverging(eta: float) -> float | None:
    return None if eta >= 3 * ROOT else power(eta)


def flat(eta: float) -> float:
    """No gain at all below η_c/2, then linear in η."""
    return -1.0 + 2.0 * max(0.0, eta / ROOT - 0.5)


#: Each curve's margin before training (m_T as η → 0); None: not known to the search.
INITIAL = {power: -2.0, saturating: -2.0, log_linear: None, sigmoid: -1.0, diverging: -2.0, flat: -1.0}


def point(curve: Curve, lr: float) -> Point:
    margin = curve(lr)
    if margin is None:
        return Point(DIVERGED)
    return Point(SUCCESS if margin > 0 else FAILURE, margin, INITIAL[curve])


def drive(curve: Curve, start: float, config: SweepConfig, limit: int = 60):
    """Run the search to its end: its last plan and the records in the order they were made."""
    records: dict[float, Point] = {}
    for _ in range(limit):
        step = plan(records, start, config)
        if step.next_lr is None:
            return step, records
        assert step.next_lr not in records, "a run was proposed twice"
        records[step.next_lr] = point(curve, step.next_lr)
    raise AssertionError("the search did not end")


def check_bracket(step, records: dict[float, Point], tolerance: float = TOL) -> None:
    """The answer a bisection gives: η_c is the lowest success, both ends are runs, ratio ≤ 1 + tol
    (a run exactly at the root ends at m_T = 0: not flipped)."""
    assert step.bracket_low <= ROOT < step.bracket_high == step.eta_c
    assert step.bracket_high / step.bracket_low <= 1 + tolerance
    assert records[step.bracket_high].verdict == SUCCESS
    assert records[step.bracket_low].verdict != SUCCESS
    assert min(lr for lr, p in records.items() if p.verdict == SUCCESS) == step.eta_c


STARTS = [ROOT / 3, ROOT * 0.9, ROOT * 1.05, ROOT * 2, ROOT * 3]
CONFIG = SweepConfig(eta_max=False)


def runs_to_eta_c(curve: Curve) -> list[int]:
    counts = []
    for start in STARTS:
        step, records = drive(curve, start, CONFIG)
        check_bracket(step, records)
        counts.append(len(records))
    return counts


@pytest.mark.parametrize(("curve", "median"), [(power, 4), (log_linear, 4), (saturating, 5)])
def test_smooth_curves_take_about_four_runs(curve, median):
    """Smooth m_T from five starts, η_c/3 to 3·η_c: the median number of runs is 4 for the power law
    (4 from every start) and the log-linear margin searched without m_0 (4 from every start), 5 for
    the saturating one (5 from every start: its concave gain leaves the estimate from two runs more
    than 1% off); bisection takes 10 from every start on every curve."""
    counts = runs_to_eta_c(curve)
    assert statistics.median(counts) <= median and max(counts) <= median + 1, counts
    bisect = [len(drive(curve, s, CONFIG.replace(search="bisect"))[1]) for s in STARTS]
    assert min(bisect) >= 9, bisect


def test_a_knife_edge_is_still_bracketed():
    """A steep sigmoid: the margins far from η_c say little (all ±1), so the search falls back on
    halving the bracket; it still ends at a 1% bracket with both ends run, in no more runs than
    bisection (5 to 10 from the five starts; bisection 10)."""
    for start in STARTS:
        step, records = drive(sigmoid, start, CONFIG)
        check_bracket(step, records)
        assert len(records) <= len(drive(sigmoid, start, CONFIG.replace(search="bisect"))[1])


def test_divergence_above_counts_as_too_high():
    """Runs above 3·η_c diverge (no margin): the search comes down from them and still finds η_c
    (6, 5 and 4 runs from the three starts; bisection 12, 10 and 10)."""
    for start in (ROOT * 20, ROOT * 3.5, ROOT / 2):
        step, records = drive(diverging, start, CONFIG)
        check_bracket(step, records)
        assert len(records) <= 6
    step, records = drive(diverging, ROOT * 20, SweepConfig())  # and η_max is bisected as before
    check_bracket(step, records)
    assert step.eta_max_low < 3 * ROOT <= step.eta_max and step.eta_max / step.eta_max_low <= 1 + TOL


@pytest.mark.parametrize("start", [ROOT / 100, ROOT * 100])
def test_a_prediction_off_by_a_hundred_times(start):
    """Extrapolation steps at most ``factor`` at a time, as bracketing does: 6 runs either way
    (bisection 13)."""
    step, records = drive(power, start, CONFIG)
    check_bracket(step, records)
    assert len(records) <= 7


def test_a_flat_region_gives_no_margin_to_follow():
    """Below η_c/2 every run ends at m_0 (no gain): the search steps up by ``factor`` as bisection
    does, then root-finds once a margin moves (7, 6 and 6 runs from the three starts)."""
    for start in (ROOT / 10, ROOT / 3, ROOT * 2):
        step, records = drive(flat, start, CONFIG)
        check_bracket(step, records)
        assert len(records) <= 7


def test_no_success_below_divergence_is_reported():
    """Every run fails until the runs diverge: the same note as the bisection's, at 1%."""

    def never(eta: float) -> float | None:
        return None if eta >= 3 * ROOT else -1.0 + 0.5 * eta / (3 * ROOT)

    INITIAL[never] = -1.0
    step, records = drive(never, ROOT, CONFIG)
    assert step.eta_c is None and "no LR below the divergence limit" in step.note
    high = min(lr for lr, p in records.items() if p.verdict == DIVERGED)
    assert high / max(lr for lr in records if lr < high) <= 1 + TOL


def test_tolerance_is_honoured():
    step, records = drive(power, ROOT * 2, CONFIG.replace(tolerance=0.001))
    check_bracket(step, records, tolerance=0.001)
    assert len(records) <= 5


def test_resuming_replays_the_same_proposals():
    """The search is a pure function of its records: every prefix of a finished search proposes
    the run that came next, and ``replay`` counts the runs back from the records alone."""
    for curve, start in [(power, ROOT * 3), (sigmoid, ROOT / 3), (diverging, ROOT * 20), (flat, ROOT / 10)]:
        step, records = drive(curve, start, CONFIG)
        ordered = list(records.items())
        for cut in range(len(ordered)):
            assert plan(dict(ordered[:cut]), start, CONFIG).next_lr == ordered[cut][0]
        shuffled = dict(reversed(ordered))  # the order records are read back in does not matter
        assert plan(shuffled, start, CONFIG) == step
        assert replay(shuffled, start, CONFIG) == len(records)
        assert replay(dict(ordered[:-1]), start, CONFIG) is None  # not complete
        assert replay(shuffled, start * 1.5, CONFIG) is None  # not this start's path


def test_without_margins_the_root_search_is_the_bisection():
    """Verdicts alone (records without a margin) give the bisection's proposals, step for step."""
    for start in (1e-7, 0.5):
        root_step, root_runs = drive_verdicts(SweepConfig(search="root"), start)
        bisect_step, bisect_runs = drive_verdicts(SweepConfig(search="bisect"), start)
        assert list(root_runs) == list(bisect_runs) and root_step == bisect_step


def drive_verdicts(config: SweepConfig, start: float):
    records: dict[float, str] = {}
    while (step := plan(records, start, config)).next_lr is not None:
        lr = step.next_lr
        records[lr] = DIVERGED if lr >= 2.2e-3 else SUCCESS if lr >= 3.3e-6 else FAILURE
    return step, records


#: Proposals of the bisection before the root search existed (phantomlens.sweep.plan at the commit
#: that added it): (η_c, η_max, start, settings, every LR tried in order).
BISECTION = [
    (
        3.3e-06,
        0.0022,
        1e-07,
        {},
        (
            "1e-07 4e-07 1.6e-06 6.4e-06 3.2e-06 4.5254834e-06 3.805462768e-06 3.489624745e-06 "
            "3.341676104e-06 3.270070876e-06 3.305679613e-06 3.287827037e-06 2.56e-05 0.0001024 "
            "0.0004096 0.0016384 0.0065536 0.0032768 0.002317047501 0.001948396937 0.002124741926 "
            "0.002218812288 0.002171267716 0.002194911271 0.002206829422"
        ),
    ),
    (
        3.3e-06,
        0.0022,
        0.5,
        {},
        (
            "0.5 0.125 0.03125 0.0078125 0.001953125 0.00048828125 0.0001220703125 3.051757812e-05 "
            "7.62939453e-06 1.907348632e-06 3.814697264e-06 2.697398304e-06 3.207765255e-06 "
            "3.498092815e-06 3.349785156e-06 3.278006168e-06 3.313701315e-06 3.295805417e-06 "
            "0.00390625 0.002762135864 0.002322670146 0.002129897915 0.002224196552 0.002176536606 "
            "0.002200237536 0.002188354985"
        ),
    ),
    (
        None,
        0.001,
        1e-05,
        {},
        (
            "1e-05 4e-05 0.00016 0.00064 0.00256 0.00128 0.0009050966799 0.001076347412 "
            "0.0009870149285 0.001030713813 0.001008627741 0.0009977628163 0.00100318057"
        ),
    ),
    (
        1e-05,
        None,
        1e-06,
        {"max_lr": 0.001},
        (
            "1e-06 4e-06 1.6e-05 8e-06 1.13137085e-05 9.51365692e-06 1.037471644e-05 9.934862498e-06 "
            "1.015240766e-05 1.004304606e-05 9.98880782e-06 6.4e-05 0.000256"
        ),
    ),
    (
        2e-05,
        0.01,
        1e-06,
        {"eta_max": False, "tolerance": 0.05},
        ("1e-06 4e-06 1.6e-05 6.4e-05 3.2e-05 2.2627417e-05 1.902731384e-05 2.074943288e-05 1.9869725e-05"),
    ),
]


@pytest.mark.parametrize(("eta_c", "eta_max", "start", "settings", "expected"), BISECTION)
def test_bisect_reproduces_the_earlier_proposals(eta_c, eta_max, start, settings, expected):
    config = SweepConfig(search="bisect", **settings)
    expected = [float(lr) for lr in expected.split()]
    records: dict[float, Point] = {}
    while (step := plan(records, start, config)).next_lr is not None:
        lr = step.next_lr
        diverged = eta_max is not None and lr >= eta_max
        verdict = DIVERGED if diverged else SUCCESS if eta_c is not None and lr >= eta_c else FAILURE
        records[lr] = Point(verdict, None if diverged else (1.0 if verdict == SUCCESS else -1.0), -2.0)
    assert list(records) == expected  # the margins, present, are ignored


def test_a_record_becomes_a_point():
    from types import SimpleNamespace

    def record(verdict: str, final: float, initial: float = -2.0):
        return SimpleNamespace(verdict=verdict, margin_final=final, margin_initial=initial)

    assert Point.of(record(SUCCESS, 0.5)) == Point(SUCCESS, 0.5, -2.0)
    assert Point.of(record(DIVERGED, 3.0)).margin is None  # too high, whatever its margin said
    assert Point.of(record(FAILURE, math.nan, math.nan)) == Point(FAILURE, None, None)
    assert lr_key(math.exp(math.log(1.234e-5))) == 1.234e-5


def test_random_curves_never_cost_more_than_two_runs_over_bisection():
    """Power laws, saturating and wiggly gains and knife edges of random shape, η_c, m_0, start
    (η_c/300 … 300·η_c), tolerance and divergence limit: the search always ends with η_c in a
    bracket within the tolerance, in at most two runs more than bisection (and, on these, a
    median of five fewer)."""
    import random

    rng = random.Random(14)
    saved = []
    for _ in range(300):
        curve, m0, root = random_curve(rng)
        tolerance, start = rng.choice([0.001, 0.01, 0.05]), root * 10 ** rng.uniform(-2.5, 2.5)
        counts = []
        for search in ("root", "bisect"):
            config = SweepConfig(search=search, tolerance=tolerance, eta_max=False)
            records: dict[float, Point] = {}
            while (step := plan(records, start, config)).next_lr is not None:
                margin = curve(step.next_lr)
                verdict = DIVERGED if margin is None else SUCCESS if margin > 0 else FAILURE
                records[step.next_lr] = Point(verdict, margin, m0)
                assert len(records) < 100
            assert step.bracket_low <= root < step.bracket_high <= step.bracket_low * (1 + tolerance)
            counts.append(len(records))
        assert counts[0] <= counts[1] + 2, counts
        saved.append(counts[1] - counts[0])
    assert statistics.median(saved) >= 4


def random_curve(rng) -> tuple[Curve, float, float]:
    """A margin curve m_T(η) with its m_0 and its root (None above a divergence limit, if any)."""
    root, m0, p = 10 ** rng.uniform(-8, -3), -(10 ** rng.uniform(-1.5, 1)), rng.uniform(0.3, 3)
    kind, k, wiggle = (
        rng.choice(["power", "saturating", "wiggly", "edge"]),
        rng.uniform(5, 100),
        rng.uniform(0, 0.3),
    )
    limit = root * rng.choice([1.5, 3, 10, math.inf])

    def curve(eta: float) -> float | None:
        r = eta / root
        if eta >= limit:
            return None
        if kind == "edge":
            return -m0 * math.tanh(k * math.log(r))
        if kind == "saturating":
            return m0 - 2 * m0 * (1 - math.exp(-math.log(2) * r**p))
        gain = m0 - m0 * r**p
        return gain * (1 + wiggle * math.sin(7 * math.log(r))) if kind == "wiggly" else gain

    return curve, m0, root
