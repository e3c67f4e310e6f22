"""Trajectory figure: the edge of the library where data becomes a picture.

Figures are built as ``matplotlib.figure.Figure`` objects and rendered with the Agg canvas
directly: pyplot and the global backend are never touched, so a notebook's inline backend (or a
GUI backend) keeps working after phantomlens has drawn something. A notebook shows a returned
figure like any other (``display(fig)``); ``figure_png`` renders it anywhere. Each panel is also
available on its own (``plot_margin(trajectory, ax=...)`` and friends) for composing figures.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def new_figure(**kwargs) -> Figure:
    """A pyplot-free figure that can render itself (Agg canvas attached); ``kwargs`` go to ``Figure``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure rendered as PNG bytes, without pyplot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)  # a figure made elsewhere may carry another backend's canvas
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a glyph the font lacks (a control character in user text)
        warnings.simplefilter("ignore")
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else new_figure(layout="constrained").add_subplot()


def plot_loss(trajectory: pd.DataFrame, ax: Axes | None = None) -> Axes:
    ax = _axes(ax)
    ax.plot(trajectory["step"], trajectory["loss"], color="black")
    ax.set_title("loss  −log p(target)")
    return ax


def plot_margin(trajectory: pd.DataFrame, ax: Axes | None = None, flip_step: int | None = None) -> Axes:
    """The margin z(target) − z(competitor); the flip is where it crosses 0."""
    ax = _axes(ax)
    ax.plot(trajectory["step"], trajectory["margin"], color="tab:purple")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_title("margin  z(target) − z(competitor)")
    if flip_step is not None:
        ax.axvline(flip_step, color="tab:green", lw=1, ls=":", label="flip")
        ax.legend(loc="best", fontsize=8)
    return ax


def plot_probabilities(trajectory: pd.DataFrame, ax: Axes | None = None) -> Axes:
    ax = _axes(ax)
    ax.plot(trajectory["step"], trajectory["p_target"], label="p(target)", color="tab:green")
    ax.plot(trajectory["step"], trajectory["p_competitor"], label="p(competitor)", color="tab:red")
    ax.set_title("probabilities")
    ax.legend(loc="best", fontsize=8)
    return ax


def plot_order_parameter(trajectory: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Φ with its two additive parts, signal and drag."""
    ax = _axes(ax)
    steps = trajectory["step"]
    ax.plot(steps, trajectory["phi"], label="Φ = S + D", color="black")
    ax.plot(steps, trajectory["signal"], label="signal S", color="tab:blue")
    ax.plot(steps, trajectory["drag"], label="drag D", color="tab:orange")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_title("order parameter")
    ax.legend(loc="best", fontsize=8)
    return ax


def plot_overlap(trajectory: pd.DataFrame, ax: Axes | None = None) -> Axes:
    ax = _axes(ax)
    ax.plot(trajectory["step"], trajectory["overlap_tc"], color="tab:brown")
    ax.set_title("overlap G(target, competitor)")
    return ax


def plot_entropy(trajectory: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Von Neumann entropy, with the purity on a second y axis."""
    ax = _axes(ax)
    ax.plot(trajectory["step"], trajectory["entropy"], color="tab:cyan", label="entropy S(ρ)")
    ax.set_title("von Neumann entropy (nats)")
    twin = ax.twinx()
    twin.plot(trajectory["step"], trajectory["purity"], color="tab:gray", label="purity", ls="--")
    twin.set_ylabel("purity Tr ρ²")
    return ax


def shade_jumps(ax: Axes, jumps: Iterable[dict]) -> None:
    """Shade each jump's step window (``step_from`` … ``step``) of a transitions analysis, and name
    its verdict at the top of the panel: ``phantom`` (the readout moved) or ``geometric`` (the
    embeddings did), as the command line's verdict column does."""
    for jump in jumps:
        ax.axvspan(jump["step_from"], jump["step"], color="gold", alpha=0.35, lw=0)
        if "phantom" in jump:
            ax.text(
                (jump["step_from"] + jump["step"]) / 2,
                0.98,
                "phantom" if jump["phantom"] else "geometric",
                transform=ax.get_xaxis_transform(),  # x in steps, y in axes fractions: always on top
                ha="center",
                va="top",
                rotation=90,
                fontsize=7,
                color="darkgoldenrod",
            )


#: A panel whose values spread less than this fraction of their size is flat: only float noise.
FLAT = 1e-6


def plain_y_axis(ax: Axes) -> None:
    """Tick labels that read as the values: never an offset ("+0.3" above the axis), and a flat
    panel drawn around its value rather than magnified into its float noise ("1e-7 + 0.3")."""
    import math

    ax.ticklabel_format(axis="y", useOffset=False)
    low, high = ax.dataLim.intervaly
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        return  # nothing drawn, or nothing finite
    size = max(abs(low), abs(high))
    if high - low <= FLAT * max(size, 1e-3):
        centre, pad = (low + high) / 2, max(0.05 * size, 1e-3)
        ax.set_ylim(centre - pad, centre + pad)


def plain(text: str) -> str:
    """User text drawn as itself: matplotlib would read ``$…$`` as mathtext (and fail on bad TeX)."""
    return str(text).replace("$", r"\$")


def _title(summary: dict) -> str:
    ctx, cfg = summary.get("context", {}), summary.get("config", {})
    flipped = ", flipped" if summary.get("flipped") else ", no flip"
    return plain(
        f"{ctx.get('text', '')!s} →{ctx.get('target', '')!s} vs{ctx.get('competitor', '')!s}   "
        f"[{cfg.get('mode', '')}, η={cfg.get('lr', '')}, {summary.get('status', '')}{flipped}]"
    )


def trajectory_figure(trajectory: pd.DataFrame, summary: dict, jumps: list[dict] | None = None) -> Figure:
    """The six-panel picture of one run (``trajectory.png``), with the jumps shaded."""
    fig = new_figure(figsize=(13, 7), layout="constrained")
    axes = fig.subplots(2, 3)
    fig.suptitle(_title(summary), fontsize=10)
    plot_loss(trajectory, axes[0, 0])
    plot_margin(trajectory, axes[0, 1], flip_step=summary.get("flip_step"))
    plot_probabilities(trajectory, axes[0, 2])
    plot_order_parameter(trajectory, axes[1, 0])
    plot_overlap(trajectory, axes[1, 1])
    plot_entropy(trajectory, axes[1, 2])
    for axis in (axes[0, 1], axes[1, 0]):
        shade_jumps(axis, jumps or [])
    for axis in axes.flat:
        axis.set_xlabel("step")
        axis.grid(alpha=0.25)
    for axis in fig.axes:  # the purity twin too
        plain_y_axis(axis)
    return fig


def plot_trajectory(
    trajectory: pd.DataFrame, summary: dict, path: Path, jumps: list[dict] | None = None
) -> Path:
    """Write ``trajectory_figure`` as a PNG to ``path``, atomically."""
    from phantomlens.atomic import write_bytes_atomic

    write_bytes_atomic(Path(path), figure_png(trajectory_figure(trajectory, summary, jumps), dpi=110))
    return Path(path)


def fact_set_figure(trajectory: pd.DataFrame, summary: dict) -> Figure:
    """A fact-set run at a glance, readable with 100 facts: every fact's sequence margin as a row
    of a heat map (sorted by the final margin; red: the competitor leads), the fraction of facts
    flipped and the joint loss over the steps."""
    import numpy as np
    from matplotlib.colors import SymLogNorm
    from matplotlib.ticker import MaxNLocator

    margins = trajectory.pivot(index="fact", columns="step", values="margin")
    margins = margins.loc[margins.iloc[:, -1].sort_values().index]
    fig = new_figure(figsize=(11, 4.5 + 0.04 * len(margins)), layout="constrained")
    heat_ax, curve_ax = fig.subplots(1, 2, width_ratios=[3, 2])
    values = margins.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    bound = float(np.percentile(np.abs(finite), 98)) if finite.size else 1.0
    bound = max(bound, 1e-6)
    steps = margins.columns
    image = heat_ax.imshow(
        values,
        aspect="auto",
        cmap="RdBu",
        interpolation="nearest",
        # Linear within ±0.5, logarithmic beyond: a flip by a few tenths of a logit stays visible
        # next to facts ten logits ahead.
        norm=SymLogNorm(linthresh=0.5, vmin=-bound, vmax=bound),
        extent=(steps[0] - 0.5, steps[-1] + 0.5, len(margins) - 0.5, -0.5),
    )
    fig.colorbar(image, ax=heat_ax, label="margin ℓ(target) − ℓ(competitor)")
    silent = {f["name"] for f in summary["facts"] if f["silent"]}
    if len(margins) <= 40:
        labels = [plain(f"{n} (silent)" if n in silent else n) for n in margins.index]
        heat_ax.set_yticks(range(len(margins)), labels, fontsize=7)
    else:
        heat_ax.set_ylabel(f"{len(margins)} facts, sorted by final margin")
    heat_ax.set_xlabel("step")
    heat_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    heat_ax.set_title("every fact's margin (blue: flipped)")
    flipped = trajectory.assign(up=trajectory["margin"] > 0).groupby("step")["up"].mean()
    curve_ax.plot(flipped.index, flipped.to_numpy(), color="tab:blue")
    curve_ax.set_ylim(-0.02, 1.02)
    curve_ax.set_xlabel("step")
    curve_ax.set_ylabel("fraction of facts flipped", color="tab:blue")
    loss_ax = curve_ax.twinx()
    joint = trajectory.groupby("step")["loss"].mean()
    loss_ax.plot(joint.index, joint.to_numpy(), color="black")
    loss_ax.set_ylabel("joint loss (mean over facts)")
    def count(n: int, noun: str) -> str:
        return f"{n} {noun}{'' if n == 1 else 's'}"

    fig.suptitle(
        f"{count(summary['n_facts'], 'fact')}: {summary['n_flipped']} flipped at the end "
        f"({summary['fraction_flipped']:.0%}), {count(len(silent), 'silent failure')}"
    )
    return fig


def prediction_figure(prediction) -> Figure:
    """``predict --plot``: the predicted final margin against peak LR (log x), as ``lr_find`` users
    expect, with η̂_c (margin 0), its κ interval, margin_safe and the recommended LR marked.
    ``prediction`` is a ``results.Prediction`` made with ``curve=True``."""
    import math

    from phantomlens.errors import PhantomLensError

    p, curve = prediction, prediction.margin_curve
    if not curve:
        raise PhantomLensError("this prediction has no margin curve: predict with curve=True (or --plot)")
    ax = _axes(None)
    margins = curve["margin"]
    central = f"predicted final margin ({p.variant}), κ = {p.kappa:.4g}"
    ax.plot(curve["lr"], margins, color="black", label=central)
    if p.kappa_log_std:  # the recommended LR allows for κ's spread: draw the curve it is read from
        # m_T with κ·e^−σ at η is the central curve at η·e^−σ: the same points, shifted right by e^σ
        shift = math.exp(p.kappa_log_std)
        ax.plot(
            [lr * shift for lr in curve["lr"]],
            margins,
            color="tab:purple",
            ls="--",
            label=f"pessimistic: κ·e^−σ = {p.kappa / shift:.3g} (low end of κ's spread)",
        )
    ax.set_xscale("log")
    # Under a decade of LR, matplotlib labels the minor ticks too, and at full size they collide.
    ax.tick_params(axis="x", which="both", labelsize=7, labelrotation=30)
    ax.axhline(0, color="grey", lw=0.8)
    safe = 1.0 if p.margin_safe is None else p.margin_safe
    if p.margin_safe is not None:
        ax.axhline(safe, color="tab:green", ls=":", lw=1, label=f"margin_safe = {safe:g}")
    if p.eta_c_low and p.eta_c_high:
        ax.axvspan(p.eta_c_low, p.eta_c_high, color="tab:red", alpha=0.12, label="η̂_c interval (κ's spread)")
    if p.eta_c:
        ax.axvline(p.eta_c, color="tab:red", ls="--", label=f"η̂_c = {p.eta_c:.3g} (margin 0)")
    if p.eta_recommended:
        ax.axvline(p.eta_recommended, color="tab:green", label=f"recommended {p.eta_recommended:.3g}")
    # The quadratic model runs off far from η̂_c; keep the window on the flip and margin_safe.
    reach = 4 * max(abs(safe), abs(p.margin_initial), 1.0)
    ax.set_ylim(max(min(margins), -reach) - 0.5, min(max(margins), reach) + 0.5)
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("predicted final margin z(target) − z(competitor)")
    ctx = p.context
    ax.set_title(
        plain(f"{ctx['target']!r} vs {ctx['competitor']!r}: {p.model}, {p.mode}, {p.schedule}, T={p.steps}"),
        fontsize=9,
    )
    ax.legend(fontsize=8)
    return ax.figure
