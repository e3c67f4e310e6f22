"""A self-contained HTML report of one or more runs: figures embedded, every user string escaped.

Figures are ``matplotlib.figure.Figure`` objects rendered by ``phantomlens.plot`` without pyplot,
so writing a report from a notebook leaves its plotting backend alone. pandas and matplotlib are
imported when a report is built, not when this module is imported.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phantomlens.atomic import write_bytes_atomic
from phantomlens.version import __version__

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

#: One run as the report sees it: (run directory, summary, trajectory, events).
Run = tuple[Path, dict, "pd.DataFrame", dict]

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1d1d1f;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9rem} table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .55rem;text-align:right} th{background:#f5f5f7}
td.l,th.l{text-align:left} .badge{display:inline-block;padding:.1rem .5rem;border-radius:.6rem;
font-size:.85rem;font-weight:600;color:#fff} .success{background:#2e7d32} .kinematic{background:#ef6c00}
.structural{background:#c62828} .diverged{background:#555} .phantom{background:#6a1b9a}
.geometric{background:#00838f} img{max-width:100%;border:1px solid #eee} .note{color:#444}
code{background:#f5f5f7;padding:0 .25rem;border-radius:.2rem}
"""


def _png(fig: Figure) -> str:
    from phantomlens.plot import figure_png

    return "data:image/png;base64," + base64.b64encode(figure_png(fig, dpi=100)).decode()


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return _e(value)


def _label(summary: dict) -> str:
    ctx, cfg = summary["context"], summary["config"]
    return f"{ctx['target'].strip()} vs {ctx['competitor'].strip()} · {cfg['mode']} · η={cfg['lr']:g}"


def explain_jump(jump: dict, frozen: bool) -> str:
    """One paragraph, in plain words, on what a jump was and why."""
    share = f"{abs(jump['readout_fraction']):.0%}"
    if jump["phantom"]:
        verdict = f"This is a <b>phantom</b>: the readout part R carries {share} of the change"
    else:
        verdict = f"This is <b>not</b> a phantom: the readout part R carries only {share}"
    geometry = (
        "The embedding matrix was bit-identical throughout (same SHA-256 at start and end), so the "
        "geometric and cross parts are exactly zero: no geometric transition was possible."
        if frozen
        else (
            f"The geometric part Γ = {jump['geometric']:+.2e} and cross term X = {jump['cross']:+.2e}. "
            f"The target–competitor overlap changed by {jump['delta_overlap']:+.2e} across the jump, "
            f"{_ratio_words(jump['overlap_change_ratio'])} its typical per-step change elsewhere"
            f"{' — flagged as possible symmetry breaking' if jump['symmetry_breaking'] else ''}."
        )
    )
    return (
        f"Between steps {jump['step_from']} and {jump['step']} Φ moved by {jump['delta_phi']:+.3f}. "
        f"{verdict}. {geometry} The margin moved smoothly at {jump['margin_velocity']:.2f} logits per "
        f"step ({jump['margin_before']:+.2f} → {jump['margin_after']:+.2f}); a two-token softmax on "
        f"those margins, damped by the overlap, predicts ΔΦ = {jump['predicted_delta_phi']:+.3f} "
        f"(error {jump['prediction_error']:+.0%}; weighted by the pair's probability mass "
        f"{jump['predicted_delta_phi_pair']:+.3f}, error {jump['prediction_error_pair']:+.0%})."
    )


def _ratio_words(ratio: float) -> str:
    if not math.isfinite(ratio):
        return "with nothing moving elsewhere to compare against"
    return f"{ratio:.1f}×"


def _facts_table(run_dir: Path, summary: dict) -> str:
    cfg = summary["config"]
    rows = [
        ("model", cfg["model"]),
        ("mode / optimiser / schedule", f"{cfg['mode']} / {cfg['optimizer']} / {cfg['schedule']}"),
        ("peak learning rate", f"{cfg['lr']:g}"),
        ("steps", f"{summary['steps_completed']} of {cfg['steps']}"),
        ("geometry", summary["geometry"]),
        ("loss: start → end", f"{_num(summary['loss_initial'])} → {_num(summary['loss_final'])}"),
        ("margin: start → end", f"{_num(summary['margin_initial'])} → {_num(summary['margin_final'])}"),
        ("flip", f"step {summary['flip_step']}" if summary["flipped"] else "never"),
        ("embeddings", "bit-identical" if summary["embeddings_unchanged"] else "changed"),
        ("run directory", str(run_dir)),
    ]
    body = "".join(f"<tr><th class=l>{_e(k)}</th><td class=l>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


_JUMP_HEAD = [
    "steps",
    "ΔΦ",
    "R (readout)",
    "Γ (geometric)",
    "X (cross)",
    "verdict",
    "margin v",
    "ΔΦ predicted",
    "error",
]


def _jumps_table(jumps: list[dict]) -> str:
    body = ""
    for jump in jumps:
        verdict = "phantom" if jump["phantom"] else "geometric"
        body += (
            f"<tr><td>{jump['step_from']}→{jump['step']}</td><td>{jump['delta_phi']:+.3f}</td>"
            f"<td>{jump['readout']:+.3f}</td><td>{jump['geometric']:+.2e}</td>"
            f"<td>{jump['cross']:+.2e}</td>"
            f"<td class=l><span class='badge {verdict}'>{verdict}</span></td>"
            f"<td>{jump['margin_velocity']:.2f}</td><td>{jump['predicted_delta_phi']:+.3f}</td>"
            f"<td>{jump['prediction_error']:+.0%}</td></tr>"
        )
    head = "".join(f"<th>{_e(h)}</th>" for h in _JUMP_HEAD)
    return f"<table><tr>{head}</tr>{body}</table>"


def _outcome_rule(events: dict) -> str:
    detail, thresholds = events["outcome_detail"], events["thresholds"]
    return (
        f"<p class=note>Outcome rule: the drag changed by {detail['drag_change']:+.4f} "
        f"(structural below −{thresholds['drag_worsening']}); the loss fell by "
        f"{detail['loss_drop_fraction']:.0%} "
        f"(silent at ≥ {thresholds['silent_loss_drop']:.0%} without a flip). "
        f"Jumps: |ΔΦ| ≥ {thresholds['jump_min_abs']}, robust z ≥ {thresholds['jump_min_z']}, "
        f"share ≥ {thresholds['jump_min_share']}; "
        f"phantom when |R| ≥ {thresholds['phantom_fraction']}·|ΔΦ|.</p>"
    )


def _run_section(index: int, run_dir: Path, summary: dict, trajectory: pd.DataFrame, events: dict) -> str:
    from phantomlens.plot import trajectory_figure

    ctx = summary["context"]
    outcome = events["outcome"]
    image = _png(trajectory_figure(trajectory, summary, events["jumps"]))
    silent = " <span class='badge kinematic'>silent</span>" if events["silent"] else ""
    parts = [
        f"<h2>Run {index}: “{_e(ctx['text'])}” → <code>{_e(ctx['target'])}</code> "
        f"vs <code>{_e(ctx['competitor'])}</code></h2>",
        f"<p><span class='badge {_e(outcome)}'>{_e(outcome)}</span>{silent} "
        f"{events['n_jumps']} jump(s), {events['n_phantom_jumps']} phantom(s).</p>",
        _facts_table(run_dir, summary),
        f"<img alt='trajectory of run {index}' src='{image}'>",
    ]
    frozen = bool(events["frozen_geometry"]["embeddings_unchanged"])
    if events["jumps"]:
        parts.append(_jumps_table(events["jumps"]))
        parts += [f"<p class=note>{explain_jump(jump, frozen)}</p>" for jump in events["jumps"]]
    else:
        parts.append("<p class=note>No catapult-like jump: Φ changed smoothly throughout.</p>")
    parts.append(_outcome_rule(events))
    return "\n".join(parts)


def overlay_figure(runs: list[Run]) -> Figure:
    """Loss, margin and Φ of several runs on shared panels, one line per run."""
    from phantomlens.plot import new_figure

    fig = new_figure(figsize=(14, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for index, (_, summary, trajectory, _) in enumerate(runs, start=1):
        label = f"{index}: {_label(summary)}"
        axes[0].plot(trajectory["step"], trajectory["loss"], label=label)
        axes[1].plot(trajectory["step"], trajectory["margin"], label=label)
        axes[2].plot(trajectory["step"], trajectory["phi"], label=label)
    for axis, title in zip(axes, ("loss", "margin (flip above 0)", "order parameter Φ")):
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.25)
    axes[1].axhline(0, color="grey", lw=0.8, ls="--")
    axes[2].legend(fontsize=7, loc="best")
    return fig


def _overlay(runs: list[Run]) -> str:
    image = _png(overlay_figure(runs))
    return f"<h2>Overlay of {len(runs)} runs</h2><img alt='overlay of all runs' src='{image}'>"


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Each run's summary, trajectory and events, validated on reading (so every number in the page
    is a number); runs stored without events.json are analysed in memory, not rewritten."""
    from phantomlens.rundir import RunResult

    runs = []
    for run_dir in map(Path, run_dirs):
        result = RunResult.load(run_dir)
        runs.append((run_dir, result.summary.to_dict(), result.trajectory, result.events.to_dict()))
    return runs


def build_report(run_dirs: list[str | Path]) -> str:
    runs = load_runs(run_dirs)
    sections = [_run_section(i, *run) for i, run in enumerate(runs, start=1)]
    if len(runs) > 1:
        sections.insert(0, _overlay(runs))
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>phantomlens report ({len(runs)} run{'s' if len(runs) != 1 else ''})</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>phantomlens report</h1>"
        f"<p class=meta>phantomlens {_e(__version__)} · generated {stamp} · "
        "Φ = F<sub>target</sub> − F<sub>competitor</sub> = signal + drag; a jump is a <i>phantom</i> when "
        "the softmax readout, not the embedding geometry, carries it. Formulas are this project's own "
        "definitions built on the abstract of Prakash &amp; Dontabhaktuni (arXiv 2606.07559).</p>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


def write_report(run_dirs: list[str | Path], out: str | Path) -> Path:
    out = Path(out)
    write_bytes_atomic(out, build_report(run_dirs).encode())
    return out
