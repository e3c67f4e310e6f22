"""The trajectory figure on a synthetic run: jump verdicts named on the figure, and flat panels read as
their values (no offset text such as "1e−8+3e−1" above the axis)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from phantomlens.plot import figure_png, new_figure, plain_y_axis, trajectory_figure

STEPS = 11


def synthetic_trajectory() -> pd.DataFrame:
    """A run whose Φ, drag, overlap, entropy and purity are flat up to float noise (as under LoRA)."""
    noise = np.random.default_rng(0).standard_normal(STEPS)
    return pd.DataFrame(
        {
            "step": np.arange(STEPS),
            "loss": np.linspace(3, 1, STEPS),
            "margin": np.linspace(-1, 1, STEPS),
            "p_target": np.linspace(0.1, 0.5, STEPS),
            "p_competitor": np.linspace(0.5, 0.1, STEPS),
            "phi": 0.3 + 1e-8 * noise,
            "signal": np.full(STEPS, 1e-3) + 1e-12 * noise,
            "drag": 0.3 - 1e-3 + 1e-8 * noise,
            "overlap_tc": 0.3 + 1e-8 * noise,
            "entropy": np.full(STEPS, 2.0),
            "purity": 1 - 1e-9 * np.abs(noise),
        }
    )


JUMPS = [
    {"step_from": 2, "step": 3, "phantom": True},
    {"step_from": 6, "step": 8, "phantom": False},
]


def test_each_jump_is_labelled_with_its_verdict_on_the_panels_it_shades():
    fig = trajectory_figure(synthetic_trajectory(), {"flip_step": 5}, JUMPS)
    shaded = [ax for ax in fig.axes if ax.texts]
    assert len(shaded) == 2  # the margin and the order parameter
    for ax in shaded:
        labels = {text.get_text(): text.get_position()[0] for text in ax.texts}
        assert labels == {"phantom": 2.5, "geometric": 7.0}  # at the middle of each jump's window
    assert figure_png(fig)[:4] == b"\x89PNG"


def test_jumps_without_a_verdict_are_shaded_without_a_label():
    fig = trajectory_figure(synthetic_trajectory(), {}, [{"step_from": 1, "step": 2}])
    assert not any(ax.texts for ax in fig.axes)


def test_flat_panels_have_no_offset_text_and_are_drawn_around_their_value():
    fig = trajectory_figure(synthetic_trajectory(), {}, JUMPS)
    fig.canvas.draw()  # offset texts are computed when the figure is drawn
    for ax in fig.axes:
        assert ax.yaxis.get_offset_text().get_text() == "", ax.get_title()
    overlap = next(ax for ax in fig.axes if ax.get_title().startswith("overlap"))
    low, high = overlap.get_ylim()
    assert low < 0.3 < high and high - low > 0.01  # not magnified into the 1e-8 noise
    labels = [t.get_text() for t in overlap.get_yticklabels()]
    assert all(len(label) <= 6 for label in labels), labels


def test_a_panel_that_does_change_keeps_matplotlibs_own_limits():
    ax = new_figure().add_subplot()
    ax.plot(range(5), [0.30, 0.31, 0.33, 0.32, 0.34])
    before = ax.get_ylim()
    plain_y_axis(ax)
    assert ax.get_ylim() == before
    ax.figure.canvas.draw()
    assert ax.yaxis.get_offset_text().get_text() == ""
