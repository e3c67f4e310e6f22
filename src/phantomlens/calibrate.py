"""Fitting κ on sweeps, its spread, and the blind test (docs/critical-lr.md, 'κ and its spread').

A sweep stores, per context, the measured η_c and the κ = 1 predictions η̂₁ of both variants
(first-order −m_0/(A·Σs), and simulated). The κ that would make a context exact is
κ_i = η̂₁/η_c. The calibrated κ for a (mode, optimiser, variant) is the geometric mean of κ_i
over the calibration contexts; its spread (coefficient of variation
and the standard deviation of log κ) says whether κ is the universal quantity the method hopes.
The blind test calibrates on every model but one and predicts the held-out model's contexts.
Sweeps over a fact file (``phantomlens sweep --facts``) have the same table, a row per fact; with
``facts``, only the rows of that file's facts are calibrated on.

Each κ also records its domain: the (mode, optimiser, schedule, T, warm-up fraction) of the sweeps
it was fitted on (the warm-up from the sweep's settings file; None where the sweep did not record
it), so that a prediction applies κ only to runs like those (``phantomlens.kappa``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from phantomlens.errors import PhantomLensError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def load_sweeps(sweep_dirs: list[str | Path], facts: str | Path | None = None) -> pd.DataFrame:
    """The critical-LR rows of several sweeps that have both a measured and a predicted η_c
    (with ``facts``, a fact file: only the rows of its facts)."""
    import numpy as np
    import pandas as pd

    names = fact_names(facts) if facts is not None else None  # a bad file fails before any sweep is read
    frames = []
    for directory in map(Path, sweep_dirs):
        path = directory / "critical_lr.parquet"
        if not path.is_file():
            raise PhantomLensError(f"{directory} has no critical_lr.parquet; run phantomlens sweep first")
        frames.append(_with_settings(_read_table(path), directory))
    table = pd.concat(frames, ignore_index=True)
    if names is not None:
        table = table[table["context"].isin(names)]
        if table.empty:
            raise PhantomLensError(
                f"no row of these sweeps is a fact of {facts}; sweep its facts first "
                f"(phantomlens sweep --facts {facts})"
            )
    long = []
    for variant, column in VARIANT_COLUMNS.items():
        if column not in table:
            continue
        part = table.copy()
        part["variant"] = variant
        part["eta_c_predicted_kappa1"] = part[column]
        long.append(part)
    table = pd.concat(long, ignore_index=True)
    usable = table["eta_c"].notna() & table["eta_c_predicted_kappa1"].notna()
    usable &= table["eta_c_predicted_kappa1"].astype(float) > 0
    table = table[usable].copy()
    if table.empty:
        raise PhantomLensError("no context in these sweeps has both a measured and a predicted η_c")
    with np.errstate(all="ignore"):
        table["kappa_i"] = table["eta_c_predicted_kappa1"].astype(float) / table["eta_c"].astype(float)
    table["key"] = table["mode"] + "/" + table["optimizer"] + "/" + table["variant"]
    _check_kappas(table)
    return table


def _check_kappas(table: pd.DataFrame) -> None:
    """One broken row (a prediction edited or written wrong) would make κ inf or nan, and the
    calibration file unusable: refuse it, naming the row."""
    import numpy as np

    from phantomlens.kappa import KAPPA_GIVEN_RANGE

    low, high = KAPPA_GIVEN_RANGE
    kappas = table["kappa_i"].to_numpy(dtype=float)
    bad = ~(np.isfinite(kappas) & (kappas >= low) & (kappas <= high))
    if bad.any():
        row = table[bad].iloc[0]
        predicted, measured = float(row["eta_c_predicted_kappa1"]), float(row["eta_c"])
        raise PhantomLensError(
            f"{row['model']} {row['context']} ({row['key']}): predicted {predicted:.3g} for a measured "
            f"η_c of {measured:.3g} is a κ of {kappas[bad][0]:.3g}, outside {low:g}–{high:g}; redo that "
            "context's prediction (delete its predictions/*.json and rerun the sweep)"
        )


def fact_names(facts: str | Path) -> set[str]:
    """The names a sweep over the fact file ``facts`` gives its rows: each fact's label."""
    from phantomlens.facts import load_facts

    return {fact.label for fact in load_facts(facts)}


def _with_settings(table: pd.DataFrame, directory: Path) -> pd.DataFrame:
    """The table with the run settings of the κ domain as columns: the table's own where it has them
    (schedule, steps), else the sweep's settings file; the warm-up fraction always from that file."""
    settings = _sweep_settings(directory)
    table = table.copy()
    for column in ("schedule", "steps", "warmup_fraction"):
        if column not in table:
            table[column] = None if settings is None else getattr(settings, column)
    return table


def _sweep_settings(directory: Path):
    """The run settings a sweep directory records (sweep.json, else summary.json), or None.

    Only the domain's warm-up fraction and older tables' schedule and T are read from them, so a
    missing or damaged file costs the domain that detail, not the calibration.
    """
    from phantomlens.atomic import read_json
    from phantomlens.settings import SweepConfig

    for name, part in (("sweep.json", None), ("summary.json", "config")):
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = read_json(path, "sweep settings")
            return SweepConfig.from_dict(data[part] if part else data).run
        except (PhantomLensError, KeyError, TypeError, ValueError):
            continue
    return None


#: Columns a sweep's critical-LR table must have, with the kind of value each holds.
REQUIRED_COLUMNS = {
    "model": "string",
    "context": "string",
    "mode": "string",
    "optimizer": "string",
    "eta_c": "number",
}


def _read_table(path: Path) -> pd.DataFrame:
    """A sweep's critical_lr.parquet, checked against what calibration reads from it."""

    from phantomlens.results import read_table

    table = read_table(path, "rerun the sweep to rewrite it")
    missing = [c for c in REQUIRED_COLUMNS if c not in table]
    if missing:
        raise PhantomLensError(
            f"{path} lacks the columns {', '.join(missing)}; is it a phantomlens sweep table?"
        )
    for column, kind in REQUIRED_COLUMNS.items():
        values = table[column].dropna()
        ok = _numeric(values) if kind == "number" else values.map(lambda v: isinstance(v, str)).all()
        if not ok:
            raise PhantomLensError(f"{path}: column {column} must hold {kind}s")
    for column in ["eta_c", *VARIANT_COLUMNS.values()]:
        if column not in table:
            continue
        if not _numeric(table[column]):
            raise PhantomLensError(f"{path}: column {column} must hold numbers")
        values = table[column].dropna().astype(float)
        # A prediction of 0 means the target already led at step 0 (any LR keeps it): not fitted.
        lowest = 0.0 if column != "eta_c" else float("nan")
        valid = (values > 0) | (values == lowest)
        if not (valid & (values < float("inf"))).all():
            raise PhantomLensError(f"{path}: column {column} must hold positive finite learning rates")
    return table


def _numeric(values: pd.Series) -> bool:
    """Numbers or missing values only (a column of nothing but missing values is fine)."""
    import pandas as pd

    values = values.dropna()
    return values.empty or pd.api.types.is_numeric_dtype(values) or values.map(_is_number).all()


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: Where a sweep's table keeps each prediction variant at κ = 1.
VARIANT_COLUMNS = {
    "first-order": "eta_c_predicted_kappa1",
    "simulated": "eta_c_predicted_sim_kappa1",
    "two-point": "eta_c_predicted_two_point_kappa1",
    "replay": "eta_c_predicted_replay_kappa1",
}


def spread(values: np.ndarray) -> dict:
    import numpy as np

    values = np.asarray(values, dtype=float)
    logs = np.log(values)
    return {
        "n": int(values.size),
        "geometric_mean": float(np.exp(logs.mean())),
        "median": float(np.median(values)),
        "cv": float(values.std(ddof=1) / values.mean()) if values.size > 1 else math.nan,
        "log_std": float(logs.std(ddof=1)) if values.size > 1 else math.nan,
        "min": float(values.min()),
        "max": float(values.max()),
    }


def fit_kappa(table: pd.DataFrame) -> dict:
    """κ per (mode, optimiser, variant): the geometric mean of κ_i, with its spread overall and per
    model, the share of contexts inside the ±1 std-of-log-κ interval, and the domain fitted on."""
    import numpy as np

    result = {}
    for key, group in table.groupby("key"):
        stats = spread(group["kappa_i"].to_numpy())
        logs = np.log(group["kappa_i"].to_numpy(dtype=float))
        inside = np.abs(logs - logs.mean()) <= stats["log_std"] if len(logs) > 1 else np.ones(1, bool)
        result[key] = {
            "value": stats["geometric_mean"],
            **stats,
            # η_c = η̂₁/κ_i, so this is the share of contexts whose η_c fell in η̂_c·exp(±log_std)
            "interval_coverage": float(inside.mean()),
            "per_model": {m: spread(g["kappa_i"].to_numpy()) for m, g in group.groupby("model")},
            "models": sorted(group["model"].unique()),
            **({"domain": domain} if (domain := fitted_domain(group)) is not None else {}),
        }
    return result


def fitted_domain(group: pd.DataFrame) -> list[dict] | None:
    """The distinct (mode, optimiser, schedule, T, warm-up) the rows were measured at; None when a
    row lacks its schedule or T (a table written before they were stored, without a settings file)."""
    import pandas as pd

    if group["schedule"].isna().any() or group["steps"].isna().any():
        return None
    points = []
    for row in group[["mode", "optimizer", "schedule", "steps", "warmup_fraction"]].itertuples(index=False):
        point = {
            "mode": str(row.mode),
            "optimizer": str(row.optimizer),
            "schedule": str(row.schedule),
            "steps": int(row.steps),
            "warmup_fraction": None if pd.isna(row.warmup_fraction) else float(row.warmup_fraction),
        }
        if point not in points:
            points.append(point)
    return points


def blind_test(table: pd.DataFrame) -> pd.DataFrame:
    """Calibrate on all models but one, predict the held-out model's contexts: error per context."""
    import numpy as np
    import pandas as pd

    rows = []
    for key, group in table.groupby("key"):
        models = sorted(group["model"].unique())
        for held_out in models:
            train = group[group["model"] != held_out]
            if train.empty:
                continue
            kappa = float(np.exp(np.log(train["kappa_i"]).mean()))
            for row in group[group["model"] == held_out].itertuples():
                predicted = float(row.eta_c_predicted_kappa1) / kappa
                rows.append(
                    {
                        "key": key,
                        "model": held_out,
                        "context": row.context,
                        "calibrated_on": ",".join(m for m in models if m != held_out),
                        "kappa": kappa,
                        "eta_c": float(row.eta_c),
                        "eta_c_predicted": predicted,
                        "relative_error": predicted / float(row.eta_c) - 1,
                        # the measurement itself is only known to within its bracket
                        "bracket_relative_width": float(row.bracket_high) / float(row.bracket_low) - 1
                        if row.bracket_low
                        else math.nan,
                    }
                )
    return pd.DataFrame(rows)


def calibrate(
    sweep_dirs: list[str | Path], facts: str | Path | None = None, relative_to: str | Path | None = None
) -> dict:
    """κ fitted on the sweeps' rows (with ``facts``: the rows of that fact file's facts only).

    With ``relative_to`` (a repository root), the file names the sweeps and the fact file relative
    to it, so that it records no path of the machine that made it.
    """
    table = load_sweeps(sweep_dirs, facts)
    kappa = fit_kappa(table)
    blind = blind_test(table)
    summary = []
    if not blind.empty:
        for (key, model), group in blind.groupby(["key", "model"]):
            errors = group["relative_error"].abs()
            summary.append(
                {
                    "key": key,
                    "model": model,
                    "n": len(group),
                    "median_abs_error": float(errors.median()),
                    "mean_abs_error": float(errors.mean()),
                    "max_abs_error": float(errors.max()),
                }
            )
    return {
        "kappa": kappa,
        "blind": summary,
        "blind_per_context": blind.to_dict(orient="records"),
        "contexts": table[["model", "context", "key", "eta_c", "eta_c_predicted_kappa1", "kappa_i"]].to_dict(
            orient="records"
        ),
        "sweeps": [_name(d, relative_to) for d in sweep_dirs],
        **({"facts": _name(facts, relative_to)} if facts is not None else {}),  # absent: calibrated as before
    }


def _name(path: str | Path, relative_to: str | Path | None) -> str:
    """``path`` as the calibration file records it: relative to ``relative_to`` when given, in
    forward slashes whatever the operating system."""
    if relative_to is None:
        return str(path)
    try:
        return Path(path).resolve().relative_to(Path(relative_to).resolve()).as_posix()
    except ValueError:
        raise PhantomLensError(
            f"{path} is not inside {relative_to}; it cannot be named relative to it"
        ) from None
