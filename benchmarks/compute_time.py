"""Compute time per device: CPU and GPU wall-clock times are not comparable, so never summed."""

from __future__ import annotations

WHERE = {"cpu": "on the 2-core CPU machine (shared with other jobs)", "cuda": "on one H200 GPU"}


def add_seconds(totals: dict[str, float], device: str | None, seconds: float | None) -> None:
    """Add one run's wall-clock time to its device's total (``cuda:0`` counts as ``cuda``)."""
    key = (device or "cpu").split(":")[0]
    totals[key] = round(totals.get(key, 0.0) + float(seconds or 0.0), 1)


def device_times(seconds: dict[str, float]) -> str:
    """``"12 min on the 2-core CPU machine …, 3 min on one H200 GPU"``."""
    return ", ".join(f"{value / 60:.0f} min {WHERE.get(k, k)}" for k, value in sorted(seconds.items())) or "–"
