"""κ, the dimensionless factor of the η_c prediction: given, read from a calibration, or 1.

See docs/critical-lr.md. Shared by the single-context and the fact-set predictions.

A κ fitted on sweeps is only known to hold for the runs those sweeps made: κ fitted at T = 50 with
a cosine schedule made the answer 2.2× too low at T = 20. So every κ entry of a calibration file
records its *domain*, the (mode, optimiser, schedule, T, warm-up fraction) of the sweeps it was
fitted on, and a κ is applied only to a run inside it; outside, κ = 1 and the prediction says so.
A file written before domains were recorded is accepted, with a note that it could not be checked.
A fitted point may widen to several schedules (a list) and a range of T (``[low, high]``) where κ
was measured not to move across them (``python -m tools.kappa_domain``; the shipped file does so
only for a variant whose κ moved less than its own spread between the measured domains).
The package ships one calibration (``phantomlens/data/calibration.json``, made by
``python -m tools.ship_calibration`` from the stored benchmark sweeps), used by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from phantomlens.atomic import read_json
from phantomlens.errors import PhantomLensError, short

__all__ = ["DOMAIN_KEYS", "KappaChoice", "choose_kappa", "resolve_kappa", "shipped_calibration"]

#: What a calibration's domain pins down: a κ holds for runs that agree on all of these.
DOMAIN_KEYS = ("mode", "optimizer", "schedule", "steps", "warmup_fraction")
SHIPPED_WHERE = "the shipped calibration (phantomlens/data/calibration.json)"
#: The κ a caller may give directly. Fitted κ lie between about 1 and 2.3; a κ of 1e-300 would only
#: turn η̂_c and the LR to use into numbers no optimiser could run at (a typo, not a calibration).
KAPPA_GIVEN_RANGE = (1e-3, 1e3)
#: The widest spread of log κ a calibration may record: e^±5 is already a factor 150 either way.
MAX_LOG_STD = 5.0
SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class KappaChoice:
    """The κ a prediction divides by, where it came from, and what the user should be told."""

    value: float
    source: str  # "given", "uncalibrated", or "<file> [<key>]"
    log_std: float | None = None  # std of log κ_i over the calibration contexts: the interval's width
    note: str | None = None  # the domain verdict (inside, outside, not recorded), in words


def shipped_calibration() -> dict:
    """The calibration that ships with the package (κ per mode/optimiser/variant, with domains)."""
    import json

    return json.loads(files("phantomlens").joinpath("data/calibration.json").read_text())


def run_point(config, factors: list[float] | None = None) -> dict:
    """The run's coordinates in a calibration's domain (``factors``: an explicit schedule)."""
    point = {key: getattr(config, key) for key in DOMAIN_KEYS}
    point["precision"] = getattr(config, "precision", "fp32")  # every stored sweep trained in fp32
    if factors is not None:
        point.update(schedule="explicit", steps=len(factors), factors=list(factors))
    return point


def choose_kappa(
    kappa: float | None,
    calibration,
    config,
    variant: str,
    *,
    shipped: bool = False,
    factors: list[float] | None = None,
) -> KappaChoice:
    """κ given directly, from ``calibration`` (a file or its contents) when the run lies inside the
    domain it was fitted on, else 1; with ``shipped`` and no ``calibration``, the shipped one."""
    if kappa is not None and calibration is not None:
        raise PhantomLensError(
            "give kappa (--kappa, κ itself) or a calibration (--calibration, κ from a file), not both"
        )
    if kappa is not None:
        low, high = KAPPA_GIVEN_RANGE
        if isinstance(kappa, bool) or not (
            isinstance(kappa, int | float) and math.isfinite(kappa) and kappa > 0
        ):
            raise PhantomLensError(f"kappa must be a positive number, got {kappa}")
        if not low <= kappa <= high:
            raise PhantomLensError(
                f"kappa must be a positive number from {low:g} to {high:g} (1: uncalibrated; fitted κ lie "
                f"near 1), got {kappa:g}"
            )
        return KappaChoice(float(kappa), "given")
    if calibration is None and not shipped:
        return KappaChoice(1.0, "uncalibrated")
    if calibration is None:
        data, where = shipped_calibration(), SHIPPED_WHERE
    elif isinstance(calibration, dict):
        data, where = calibration, "calibration dict"
    else:
        path = Path(calibration)
        data = read_json(path, "calibration file", "make one with phantomlens calibrate")
        where = str(path)
    table = _checked_table(data, where)
    key = f"{config.mode}/{config.optimizer}/{variant}"
    point = run_point(config, factors)
    if key not in table:
        if calibration is None:  # the shipped file simply does not cover this mode/optimiser/variant
            note = f"{where} has no κ for {key}: κ = 1, uncalibrated"
            return KappaChoice(1.0, "uncalibrated", None, note)
        raise PhantomLensError(
            f"{where} has no κ for {key}; it has {', '.join(map(str, table)) or 'none'}"
            + ("" if variant == "first-order" else " (choose one with --variant)")
        )
    return _entry_choice(table[key], where, key, point)


def resolve_kappa(
    kappa: float | None, calibration, config, variant: str = "first-order"
) -> tuple[float, str]:
    """(κ, its source) for callers that print one line: a domain note is folded into the source."""
    choice = choose_kappa(kappa, calibration, config, variant)
    if choice.note and choice.source == "uncalibrated":
        return choice.value, choice.note
    return choice.value, choice.source + (f"; {choice.note}" if choice.note else "")


def _entry_choice(entry: dict, where: str, key: str, point: dict) -> KappaChoice:
    domain = entry.get("domain")
    log_std = entry.get("log_std")
    log_std = float(log_std) if _is_number(log_std) and math.isfinite(log_std) and log_std >= 0 else None
    source = f"{where} [{key}]"
    if domain is None:
        note = (
            f"{where} records no domain (written before domains were): κ applied without checking "
            "that it was fitted on this run's mode, optimiser, schedule and T"
        )
        return KappaChoice(float(entry["value"]), source, log_std, note)
    if not any(_inside(point, fitted) for fitted in domain):
        return _outside(domain_words([domain]), point)
    note = f"inside the calibration's domain (fitted on {domain_words([domain])})"
    return KappaChoice(float(entry["value"]), source, log_std, note)


def _outside(fitted_on: str, point: dict) -> KappaChoice:
    note = (
        f"outside the calibration's domain (fitted on {fitted_on}; this run: {_point_words(point)}): "
        "κ = 1, uncalibrated"
    )
    return KappaChoice(1.0, "uncalibrated", None, note)


def _inside(point: dict, fitted: dict) -> bool:
    """Whether a run agrees with one fitted (mode, optimiser, schedule, T, warm-up) point.

    An explicit schedule (a list of factors) is inside when it is, step for step, the fitted
    schedule; a warm-up fraction the sweep did not record is not held against the run.
    """
    if point["mode"] != fitted["mode"] or point["optimizer"] != fitted["optimizer"]:
        return False
    if point.get("precision", "fp32") != fitted.get("precision", "fp32"):
        return False
    if point["schedule"] == "explicit":
        from phantomlens.session import schedule_factors

        warmup = fitted.get("warmup_fraction")
        steps = len(point["factors"])
        if not _matches(steps, fitted["steps"]):
            return False
        names = fitted["schedule"] if isinstance(fitted["schedule"], list) else [fitted["schedule"]]
        for name in names:  # inside when it is, step for step, one of the fitted schedules at its T
            expected = schedule_factors(steps, name, 0.1 if warmup is None else warmup)
            if all(abs(a - b) <= 1e-6 for a, b in zip(expected, point["factors"], strict=True)):
                return True
        return False
    if not _matches(point["schedule"], fitted["schedule"]) or not _matches(point["steps"], fitted["steps"]):
        return False
    warmup = fitted.get("warmup_fraction")
    return point["schedule"] == "constant" or warmup is None or abs(point["warmup_fraction"] - warmup) < 1e-9


def _matches(value, fitted) -> bool:
    """A run's schedule or T against a fitted one: equal, one of a list of schedules, or inside a
    [low, high] range of T."""
    if isinstance(fitted, list) and fitted and all(isinstance(f, str) for f in fitted):
        return value in fitted
    if isinstance(fitted, list):
        return fitted[0] <= value <= fitted[1]
    return value == fitted


def _point_words(point: dict) -> str:
    schedule = point["schedule"]
    if schedule == "explicit":
        return f"{point['mode']}/{point['optimizer']}, an explicit schedule, T = {point['steps']}"
    steps = point["steps"]
    steps = f"{steps[0]}–{steps[1]}" if isinstance(steps, list) else steps
    warmup = "" if schedule == "constant" else f", warm-up {point['warmup_fraction']:g}"
    if isinstance(schedule, list):
        schedule = " or ".join(schedule)
    precision = "" if point.get("precision", "fp32") == "fp32" else f", {point['precision']}"
    return f"{point['mode']}/{point['optimizer']}, {schedule}, T = {steps}{warmup}{precision}"


def domain_words(domains) -> str:
    """The fitted points in words, each once: 'lora/adamw, cosine, T = 50, warm-up 0.1'."""
    words: list[str] = []
    for domain in domains:
        for fitted in domain or []:
            warmup = fitted.get("warmup_fraction")
            point = {**fitted, "warmup_fraction": 0.1 if warmup is None else warmup}
            text = _point_words(point) + (" (warm-up not recorded)" if warmup is None else "")
            if text not in words:
                words.append(text)
    return "; ".join(words) or "no recorded domain"


def _checked_table(data, where: str) -> dict:
    """A calibration file's κ table, every entry checked (a bad one is refused whichever is asked)."""
    table = data.get("kappa") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise PhantomLensError(
            f"{where} is not a calibration file (no 'kappa' table); make one with phantomlens calibrate"
        )
    low, high = KAPPA_GIVEN_RANGE
    for key, entry in table.items():
        value = entry.get("value") if isinstance(entry, dict) else None
        if not _is_number(value) or not (math.isfinite(value) and low <= value <= high):
            raise PhantomLensError(
                f"{where}: κ for {key} must be a number from {low:g} to {high:g}, got {short(value)}"
            )
        spread = entry.get("log_std")
        if spread is not None and not (_is_number(spread) and 0 <= spread <= MAX_LOG_STD):
            raise PhantomLensError(
                f"{where}: log_std of κ for {key} must be a number from 0 to {MAX_LOG_STD:g}, "
                f"got {short(spread)}"
            )
        if "domain" in entry:
            _check_domain(entry["domain"], f"{where}: the domain of κ for {key}")
    return table


def _check_domain(domain, what: str) -> None:
    if not isinstance(domain, list) or not all(isinstance(d, dict) for d in domain):
        raise PhantomLensError(f"{what} must be a list of fitted points, got {short(domain)}")
    for fitted in domain:
        if _is_number(fitted.get("steps")) and float(fitted["steps"]).is_integer():
            fitted["steps"] = int(fitted["steps"])  # 50.0 from a JSON writer that emits floats
        if not _fitted_point_ok(fitted):
            raise PhantomLensError(
                f"{what} must name one mode and optimizer, a schedule ({', '.join(SCHEDULES)}, or a "
                f"list of them) and steps ≥ 1 (or a [low, high] range), got {short(fitted, 120)}"
            )
        warmup = fitted.get("warmup_fraction")
        if warmup is not None and not (_is_number(warmup) and 0 <= warmup < 1):
            raise PhantomLensError(f"{what}: warmup_fraction must be in [0, 1), got {short(warmup)}")


def _fitted_point_ok(fitted: dict) -> bool:
    kinds = {"mode": str, "optimizer": str, "schedule": str, "steps": int}
    if any(not _of_kind(fitted.get(k), t) for k, t in kinds.items()):
        return False
    if not (isinstance(fitted["mode"], str) and isinstance(fitted["optimizer"], str)):
        return False
    schedules = fitted["schedule"] if isinstance(fitted["schedule"], list) else [fitted["schedule"]]
    steps = fitted["steps"] if isinstance(fitted["steps"], list) else [fitted["steps"]]
    return all(s in SCHEDULES for s in schedules) and all(t >= 1 for t in steps)


def _of_kind(value, kind: type) -> bool:
    """A domain field: one value of ``kind``; for schedule, a non-empty list of names; for steps,
    a [low, high] range with low ≤ high."""
    if isinstance(value, list) and kind is str:
        return bool(value) and all(isinstance(v, str) for v in value)
    if isinstance(value, list) and kind is int:
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return len(value) == 2 and whole and value[0] <= value[1]
    return isinstance(value, kind) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A JSON number a float can hold (a 400-digit integer is not one: it overflows)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True
