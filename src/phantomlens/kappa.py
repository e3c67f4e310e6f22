"""κ, the dimensionless factor of the η_c prediction: given, read from a calibration file, or 1.

See docs/critical-lr.md. Shared by the single-context and the fact-set predictions.
"""

from __future__ import annotations

import math
from pathlib import Path

from phantomlens.atomic import read_json
from phantomlens.errors import PhantomLensError

__all__ = ["resolve_kappa"]


def resolve_kappa(
    kappa: float | None, calibration, config, variant: str = "first-order"
) -> tuple[float, str]:
    """κ given directly, from a calibration file (per mode and optimiser), or 1 (uncalibrated)."""
    if kappa is not None:
        if not (math.isfinite(kappa) and kappa > 0):
            raise PhantomLensError(f"kappa must be a positive number, got {kappa}")
        return float(kappa), "given"
    if calibration is None:
        return 1.0, "uncalibrated"
    if isinstance(calibration, dict):
        data, where = calibration, "calibration dict"
    else:
        path = Path(calibration)
        data = read_json(path, "calibration file", "make one with phantomlens calibrate")
        where = str(path)
    return _kappa_entry(data, where, f"{config.mode}/{config.optimizer}/{variant}")


def _kappa_entry(data, where: str, key: str) -> tuple[float, str]:
    """κ for ``key`` from a calibration file's contents, checked against the file's schema."""
    table = data.get("kappa") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise PhantomLensError(
            f"{where} is not a calibration file (no 'kappa' table); make one with phantomlens calibrate"
        )
    entry = table.get(key)
    if entry is None:
        raise PhantomLensError(f"{where} has no κ for {key}; it has {', '.join(map(str, table)) or 'none'}")
    value = entry.get("value") if isinstance(entry, dict) else None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value > 0)
    ):
        raise PhantomLensError(f"{where}: κ for {key} must be a positive number, got {value!r}")
    return float(value), f"{where} [{key}]"
