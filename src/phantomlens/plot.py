"""Trajectory figure: the edge of the library where data becomes a picture."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd


def trajectory_figure(trajectory: pd.DataFrame, summary: dict, jumps: list[dict] | None = None):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ctx = summary.get("context", {})
    steps = trajectory["step"]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    title = (
        f"{ctx.get('text', '')!s} →{ctx.get('target', '')!s} vs{ctx.get('competitor', '')!s}   "
        f"[{summary.get('config', {}).get('mode', '')}, η={summary.get('config', {}).get('lr', '')}, "
        f"{summary.get('status', '')}{', flipped' if summary.get('flipped') else ', no flip'}]"
    )
    fig.suptitle(title, fontsize=10)

    ax = axes[0, 0]
    ax.plot(steps, trajectory["loss"], color="black")
    ax.set_title("loss  −log p(target)")

    ax = axes[0, 1]
    ax.plot(steps, trajectory["margin"], color="tab:purple")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_title("margin  z(target) − z(competitor)")
    if summary.get("flip_step") is not None:
        ax.axvline(summary["flip_step"], color="tab:green", lw=1, ls=":", label="flip")
        ax.legend(loc="best", fontsize=8)

    ax = axes[0, 2]
    ax.plot(steps, trajectory["p_target"], label="p(target)", color="tab:green")
    ax.plot(steps, trajectory["p_competitor"], label="p(competitor)", color="tab:red")
    ax.set_title("probabilities")
    ax.legend(loc="best", fontsize=8)

    ax = axes[1, 0]
    ax.plot(steps, trajectory["phi"], label="Φ = S + D", color="black")
    ax.plot(steps, trajectory["signal"], label="signal S", color="tab:blue")
    ax.plot(steps, trajectory["drag"], label="drag D", color="tab:orange")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_title("order parameter")
    ax.legend(loc="best", fontsize=8)

    ax = axes[1, 1]
    ax.plot(steps, trajectory["overlap_tc"], color="tab:brown")
    ax.set_title("overlap G(target, competitor)")

    ax = axes[1, 2]
    ax.plot(steps, trajectory["entropy"], color="tab:cyan", label="entropy S(ρ)")
    ax.set_title("von Neumann entropy (nats)")
    twin = ax.twinx()
    twin.plot(steps, trajectory["purity"], color="tab:gray", label="purity", ls="--")
    twin.set_ylabel("purity Tr ρ²")

    for jump in jumps or []:
        for axis in (axes[0, 1], axes[1, 0]):
            axis.axvspan(jump["step_from"], jump["step"], color="gold", alpha=0.35, lw=0)
    for axis in axes.flat:
        axis.set_xlabel("step")
        axis.grid(alpha=0.25)
    return fig


def plot_trajectory(trajectory: pd.DataFrame, summary: dict, path: Path, jumps=None) -> Path:
    import matplotlib.pyplot as plt

    from phantomlens.atomic import write_bytes_atomic

    fig = trajectory_figure(trajectory, summary, jumps)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(Path(path), buffer.getvalue())
    return Path(path)
