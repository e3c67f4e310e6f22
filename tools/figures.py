"""The findings' figures: a phase diagram per model and trajectory panels of chosen runs."""

from __future__ import annotations

import math

import pandas as pd

from phantomlens.results import DEFAULT_VARIANT
from tools.findings_data import FIGURES_DIR, MODES, ROOT, model_contexts

OUTCOME_COLOURS = {
    "success": "#2b8a3e",
    "kinematic": "#f59f00",
    "structural": "#c92a2a",
    "diverged": "#212529",
}
BLIND_COLOUR = "#1c7ed6"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, name: str) -> str:
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES_DIR / name, dpi=110, metadata={"Software": None}, bbox_inches="tight")
    return f"figures/{name}"


def _phase_panel(ax, model: str, mode: str, runs, critical, blind, contexts: list[str]) -> None:
    sub = runs[(runs["model"] == model) & (runs["mode"] == mode) & (runs["optimizer"] == "adamw")]
    for _, r in sub[sub["context"].isin(contexts)].iterrows():
        colour = OUTCOME_COLOURS.get(r["outcome"], "#868e96")
        face = "white" if r["silent"] else colour
        y = contexts.index(r["context"])
        ax.scatter(r["lr"], y, marker="s", s=46, facecolor=face, edgecolor=colour, linewidth=1.6, zorder=3)
    for _, c in critical[(critical["model"] == model) & (critical["mode"] == mode)].iterrows():
        if c["eta_c"] and math.isfinite(c["eta_c"]):
            y = contexts.index(c["context"])
            ax.plot([c["eta_c"]] * 2, [y - 0.42, y + 0.42], color="black", linewidth=2.2, zorder=4)
    for _, p in blind[(blind["model"] == model) & (blind["mode"] == mode)].iterrows():
        if p["context"] in contexts and p["eta_c_predicted"]:
            y = contexts.index(p["context"])
            ax.scatter(p["eta_c_predicted"], y, marker="x", color=BLIND_COLOUR, s=60, zorder=5)
    ax.set_xscale("log")
    ax.set_title(f"{model}, {mode} fine-tuning (AdamW, T = 50, cosine)")
    ax.set_xlabel("peak learning rate η")
    ax.grid(axis="x", alpha=0.3)


def _phase_legend() -> list:
    from matplotlib.lines import Line2D

    def square(label: str, **style) -> Line2D:
        return Line2D([], [], marker="s", linestyle="", markersize=8, label=label, **style)

    return [
        *(square(outcome, color=colour) for outcome, colour in OUTCOME_COLOURS.items()),
        square("silent failure (hollow)", markerfacecolor="white", markeredgecolor="#f59f00"),
        Line2D([], [], color="black", linewidth=2.2, label="η_c (sweep)"),
        Line2D(
            [],
            [],
            marker="x",
            linestyle="",
            color=BLIND_COLOUR,
            markersize=8,
            label=f"η̂_c, blind ({DEFAULT_VARIANT}, κ from the other models)",
        ),
    ]


def phase_figure(model: str, runs: pd.DataFrame, critical: pd.DataFrame, blind: pd.DataFrame) -> str:
    """Every stored AdamW run of the sweep contexts by LR and outcome, with η_c and its blind prediction."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharey=True)
    contexts = model_contexts(model)
    for ax, mode in zip(axes, MODES, strict=True):
        _phase_panel(ax, model, mode, runs, critical, blind, contexts)
    axes[0].set_yticks(range(len(contexts)), contexts)
    axes[0].invert_yaxis()
    fig.legend(
        handles=_phase_legend(), loc="lower center", ncol=4, frameon=False, bbox_to_anchor=(0.5, -0.08)
    )
    fig.tight_layout()
    name = _save(fig, f"phase-{model}.png")
    plt.close(fig)
    return name


def trajectory_figure(runs: list[tuple[str, str]], name: str, columns=("signal", "drag")) -> str:
    """One panel per (run directory, title): ``columns`` against the step, the loss on a second axis."""
    from phantomlens.results import load_trajectory

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.6), squeeze=False)
    for ax, (directory, title) in zip(axes[0], runs, strict=True):
        trajectory = load_trajectory(ROOT / directory)
        for column in columns:
            ax.plot(trajectory["step"], trajectory[column], label=column)
        ax2 = ax.twinx()
        ax2.plot(trajectory["step"], trajectory["loss"], color="#adb5bd", linestyle="--", label="loss")
        ax2.set_ylabel("loss")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    out = _save(fig, name)
    plt.close(fig)
    return out
