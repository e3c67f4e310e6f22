"""Formatting shared by the generated docs: missing values, percentages, compute time per device.

One place for each convention, so the docs cannot disagree: a missing value (None or NaN) is
shown as "–"; CPU and GPU wall-clock times are not comparable, so they are never summed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

DASH = "–"

#: What each device was in this project's measurements (``cuda:0`` counts as ``cuda``).
MACHINES = {"cpu": "the 2-core CPU machine", "cuda": "one H200 or H100 GPU"}

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def missing(value: object) -> bool:
    """None or NaN: a value that was not measured."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: float | None, spec: str = "+.3f") -> str:
    """``value`` formatted with ``spec``, or "–" when it is missing."""
    return DASH if missing(value) else format(value, spec)


def pct(value: float | None, digits: int = 1) -> str:
    """A fraction as a percentage (``0.123`` → ``12.3%``), or "–"."""
    return fmt(value, f".{digits}%")


def value_range(values: Iterable[float | None], spec: str = ".2g") -> str:
    """``lo–hi`` of the finite values (one value alone; "–" when there are none)."""
    finite = sorted(v for v in values if v is not None and math.isfinite(v))
    if not finite:
        return DASH
    if len(finite) == 1:
        return format(finite[0], spec)
    return f"{format(finite[0], spec)}–{format(finite[-1], spec)}"


def sci(value: float, digits: int = 1) -> str:
    """Scientific notation as written in prose: ``2.4796e-05`` → ``2.5e-5``."""
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def number_word(n: int) -> str:
    """Small counts in words (``2`` → ``two``), larger ones as digits."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def add_seconds(totals: dict[str, float], device: str | None, seconds: float | None) -> None:
    """Add one run's wall-clock time to its device's total (``cuda:0`` counts as ``cuda``)."""
    key = (device or "cpu").split(":")[0]
    totals[key] = round(totals.get(key, 0.0) + float(seconds or 0.0), 1)


def device_times(
    seconds: dict[str, float],
    *,
    hours: bool = False,
    joiner: str = ", ",
    notes: dict[str, str] | None = None,
) -> str:
    """Compute time per device in words (``"12 min on the 2-core CPU machine, 3 min on one H200 or
    H100 GPU"``).

    ``notes`` adds a remark after a device (``{"cuda": "summed over parallel runs"}``); "–" when
    nothing ran.
    """
    notes = notes or {}
    parts = []
    for device, value in sorted(seconds.items()):
        amount = f"{value / 3600:.1f} h" if hours else f"{value / 60:.0f} min"
        note = f" ({notes[device]})" if device in notes else ""
        parts.append(f"{amount} on {MACHINES.get(device, device)}{note}")
    return joiner.join(parts) or DASH


#: The benchmark docs' remark: their CPU times come from a machine other jobs shared.
SHARED_CPU = {"cpu": "shared with other jobs"}
