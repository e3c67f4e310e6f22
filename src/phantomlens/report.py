"""A self-contained HTML report of one or more runs: figures embedded, every user string escaped.

Single-context runs and fact-set runs may be mixed in one page. A fact-set run gets a headline, its
overview figure, a table of every fact and one collapsed ``<details>`` section per fact (silent
failures and other failures first), with small, low-resolution figures so that a page for a
hundred facts stays a few megabytes and quick to open.

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
from phantomlens.errors import PhantomLensError
from phantomlens.version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterable

    import pandas as pd
    from matplotlib.figure import Figure

    from phantomlens.factresults import FactOutcome
    from phantomlens.factrun import FactSetResult

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
details{border:1px solid #e3e3e6;border-radius:.3rem;margin:.3rem 0;padding:.2rem .6rem}
summary{cursor:pointer} details[open]{padding-bottom:.6rem} details img{max-width:420px}
table.facts th{position:sticky;top:0} table.facts tr:nth-child(even) td{background:#fafafa}
"""


def _png(fig: Figure, dpi: int = 100) -> str:
    from phantomlens.plot import figure_png

    return "data:image/png;base64," + base64.b64encode(figure_png(fig, dpi=dpi)).decode()


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


def _stop_and_notes(stopped: bool, completed: int, planned: int, reason: str, notes: list[str]) -> str:
    """Why a run ended before its last step (early stopping's reason) and its notes, as paragraphs."""
    stop = (
        f"<p class=note>stopped early after {completed} of {planned} steps: {_e(reason)}</p>"
        if stopped
        else ""
    )
    return stop + "".join(f"<p class=note>note: {_e(n)}</p>" for n in notes)


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
        _stop_and_notes(
            bool(summary.get("stopped_early")),
            summary["steps_completed"],
            summary["config"]["steps"],
            summary.get("stop_reason") or "",
            summary.get("notes") or [],
        ),
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


# --- fact-set runs ---------------------------------------------------------------------------------

#: Per-fact figures are thumbnails: a hundred of them must not make the page tens of megabytes.
FACT_FIGSIZE = (4.2, 2.0)
FACT_DPI = 72


def fact_margin_figure(trajectory: pd.DataFrame, flip_step: int | None, jumps: list[dict]) -> Figure:
    """One fact's sequence margin over the steps, small, with its jumps shaded."""
    from phantomlens.plot import new_figure, plot_margin, shade_jumps

    fig = new_figure(figsize=FACT_FIGSIZE)
    # fixed margins: a constrained layout draws every figure twice, a third of a 100-fact report
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.22, top=0.86)
    ax = plot_margin(trajectory, fig.add_subplot())
    if flip_step is not None:  # the line without plot_margin's legend: "best" placement costs a third
        ax.axvline(flip_step, color="tab:green", lw=1, ls=":")
    shade_jumps(ax, jumps)
    # plot_margin's title names the single-token margin; a fact's is the sequence margin
    ax.set_title("sequence margin ℓ(target) − ℓ(competitor)", fontsize=8)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25)
    return fig


def fact_order(facts: list[FactOutcome]) -> list[FactOutcome]:
    """Silent failures first, then the other failures, then successes; file order within each, so
    a reader finds the facts that need attention at the top without losing the file's layout."""
    ranked = sorted(enumerate(facts), key=lambda p: (_fact_rank(p[1]), p[0]))
    return [fact for _, fact in ranked]


def _fact_rank(fact: FactOutcome) -> int:
    if fact.silent:
        return 0
    return 1 if fact.outcome != "success" else 2


def _badges(outcome: str, silent: bool) -> str:
    badge = f"<span class='badge {_e(outcome)}'>{_e(outcome)}</span>"
    return badge + (" <span class='badge kinematic'>SILENT</span>" if silent else "")


def _fact_set_headline(index: int, result: FactSetResult) -> str:
    from phantomlens.clifacts import fact_source

    summary = result.summary
    silent = summary.silent_failures
    named = ", ".join(f"<code>{_e(n)}</code>" for n in silent) if silent else "none"
    reason = f" ({_e(summary.status_reason)})" if summary.status_reason else ""
    stop = (summary.stopped_early, summary.steps_completed, result.config.steps, summary.stop_reason)
    notes = _stop_and_notes(*stop, summary.notes)
    return (
        f"<h2>Run {index}: fact set of {_e(fact_source(summary))}</h2>"
        f"<p><b>{summary.n_flipped} of {summary.n_facts} flipped</b> at the end "
        f"({summary.fraction_flipped:.0%}) · status {_e(summary.status)}{reason} · "
        f"silent failures ({len(silent)}): {named}</p>{notes}"
    )


def _fact_set_facts(result: FactSetResult) -> str:
    summary, run = result.summary, result.config
    outcomes = ", ".join(f"{name} {count}" for name, count in summary.outcomes.items())
    rows = [
        ("model", run.model),
        ("mode / optimiser / schedule", f"{run.mode} / {run.optimizer} / {run.schedule}"),
        ("peak learning rate", f"{run.peak_lr:g}"),
        ("steps", f"{summary.steps_completed} of {run.steps}"),
        ("geometry", summary.geometry),
        ("joint loss: start → end", f"{_num(summary.loss_initial)} → {_num(summary.loss_final)}"),
        ("outcomes", outcomes),
        ("embeddings", "bit-identical" if summary.embeddings_unchanged else "changed"),
        ("run directory", str(result.out_dir)),
    ]
    body = "".join(f"<tr><th class=l>{_e(k)}</th><td class=l>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


_FACT_HEAD = ["fact", "outcome ▼", "margin 0 → end", "flip step", "loss 0 → end", "tokens t/c", "k*", "jumps"]


def _fact_table(facts: list[FactOutcome], anchors: dict[str, str]) -> str:
    """One row per fact, in ``fact_order``; a fact with a section below links to it."""
    body = ""
    for f in facts:
        name = _e(f.name)
        cell = f"<a href='#{anchors[f.name]}'>{name}</a>" if f.name in anchors else name
        body += (
            f"<tr><td class=l>{cell}</td><td class=l>{_badges(f.outcome, f.silent)}</td>"
            f"<td>{_num(f.margin_initial, 3)} → {_num(f.margin_final, 3)}</td>"
            f"<td>{'–' if f.flip_step is None else f.flip_step}</td>"
            f"<td>{_num(f.loss_initial, 3)} → {_num(f.loss_final, 3)}</td>"
            f"<td>{len(f.target_tokens)}/{len(f.competitor_tokens)}</td><td>{f.branch}</td>"
            f"<td>{f.n_jumps} ({f.n_phantom_jumps} phantom)</td></tr>"
        )
    head = "".join(f"<th{' class=l' if i < 2 else ''}>{_e(h)}</th>" for i, h in enumerate(_FACT_HEAD))
    return f"<table class=facts><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fact_details(result: FactSetResult, fact: FactOutcome, anchor: str, frozen: bool) -> str:
    """One fact, collapsed: the fact as trained, its margin thumbnail, its jumps explained."""
    events = result.fact_events(fact.name).to_dict()
    image = _png(
        fact_margin_figure(result.fact_trajectory(fact.name), fact.flip_step, events["jumps"]), FACT_DPI
    )
    flip = "never flipped" if fact.flip_step is None else f"flipped at step {fact.flip_step}"
    parts = [
        f"<details id={anchor}><summary><b>{_e(fact.name)}</b> {_badges(fact.outcome, fact.silent)} "
        f"margin {_num(fact.margin_initial, 3)} → {_num(fact.margin_final, 3)} · {flip} · "
        f"{fact.n_jumps} jump(s), {fact.n_phantom_jumps} phantom(s)</summary>",
        f"<p>“{_e(fact.prompt)}” → <code>{_e(fact.target)}</code> vs <code>{_e(fact.competitor)}</code>"
        f"{' (chat template)' if fact.chat else ''} · answer tokens {len(fact.target_tokens)}/"
        f"{len(fact.competitor_tokens)}, branching at token k* = {fact.branch} · "
        "figure: dotted green, the flip; gold, the jumps</p>",
        f"<img alt='margin of fact {_e(fact.name)}' src='{image}'>",
    ]
    if events["jumps"]:
        parts.append(_jumps_table(events["jumps"]))
        parts += [f"<p class=note>{explain_jump(jump, frozen)}</p>" for jump in events["jumps"]]
    else:
        parts.append("<p class=note>No catapult-like jump: Φ changed smoothly throughout.</p>")
    parts.append(_outcome_rule(events))
    return "\n".join(parts) + "</details>"


def _fact_set_section(index: int, result: FactSetResult, selected: set[str] | None) -> str:
    ordered = fact_order(result.summary.facts)
    position = {f.name: j for j, f in enumerate(result.summary.facts)}
    # ids from positions, not names: a name is user text and may hold anything
    shown = [f for f in ordered if selected is None or f.name in selected]
    anchors = {f.name: f"run{index}-fact{position[f.name]}" for f in shown}
    frozen = result.summary.embeddings_unchanged
    which = "every fact" if selected is None else f"{len(shown)} of {len(ordered)} facts (--facts)"
    parts = [
        _fact_set_headline(index, result),
        _fact_set_facts(result),
        f"<img alt='overview of run {index}' src='{_png(result.plot())}'>",
        "<p class=note>Silent failures first, then the other failures, then successes.</p>",
        _fact_table(ordered, anchors),
        f"<h3>Per fact: {which}, collapsed</h3>",
        *(_fact_details(result, f, anchors[f.name], frozen) for f in shown),
    ]
    return "\n".join(parts)


def read_fact_names(path: str | Path) -> list[str]:
    """The fact names a ``--facts`` file lists: a fact file (.jsonl or .csv, as ``run --facts``
    takes: each fact's name, or its prompt when it has none), or any other text file holding one
    name per line."""
    from phantomlens.facts import load_facts

    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json", ".csv"):
        return [fact.label for fact in load_facts(path)]
    if not path.is_file():
        raise PhantomLensError(f"fact list {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PhantomLensError(
            f"fact list {path} cannot be read as UTF-8 text ({type(exc).__name__})"
        ) from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise PhantomLensError(f"fact list {path} names no facts")
    return names


def check_fact_names(entries: list[Run | FactSetResult], names: Iterable[str]) -> set[str]:
    """``names`` as a set, once every one is a fact of some fact-set run among ``entries``."""
    from phantomlens.factrun import FactSetResult

    fact_sets = [e for e in entries if isinstance(e, FactSetResult)]
    if not fact_sets:
        raise PhantomLensError(
            f"facts were selected (--facts), but none of the {len(entries)} run directories holds "
            "a fact-set run (phantomlens run --facts FILE makes one)"
        )
    known = {f.name for result in fact_sets for f in result.summary.facts}
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in known]
    if unknown:
        listed = ", ".join(repr(n) for n in unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise PhantomLensError(f"no fact-set run given has a fact named {listed}")
    return set(names)


# --- loading and the page -----------------------------------------------------------------------


def load_runs(run_dirs: list[str | Path]) -> list[Run]:
    """Each run's summary, trajectory and events, validated on reading (so every number in the page
    is a number); runs stored without events.json are analysed in memory, not rewritten."""
    from phantomlens.rundir import RunResult

    runs = []
    for run_dir in map(Path, run_dirs):
        result = RunResult.load(run_dir)
        runs.append((run_dir, result.summary.to_dict(), result.trajectory, result.events.to_dict()))
    return runs


def load_any(run_dirs: list[str | Path]) -> list[Run | FactSetResult]:
    """Every run, single-context or fact-set, in the order given; all are read and validated
    before any figure is drawn, so a bad directory fails fast and nothing is written."""
    from phantomlens.factresults import is_fact_set
    from phantomlens.factrun import FactSetResult

    entries: list[Run | FactSetResult] = []
    for run_dir in map(Path, run_dirs):
        entries.append(FactSetResult.load(run_dir) if is_fact_set(run_dir) else load_runs([run_dir])[0])
    return entries


def build_report(run_dirs: list[str | Path], facts: Iterable[str] | None = None) -> str:
    """The page for ``run_dirs``; ``facts`` (names) limits fact-set runs' per-fact sections."""
    from phantomlens.factrun import FactSetResult

    entries = load_any(run_dirs)
    selected = None if facts is None else check_fact_names(entries, facts)
    sections = [
        _fact_set_section(i, e, selected) if isinstance(e, FactSetResult) else _run_section(i, *e)
        for i, e in enumerate(entries, start=1)
    ]
    singles = [e for e in entries if not isinstance(e, FactSetResult)]
    if len(singles) > 1:
        sections.insert(0, _overlay(singles))
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>phantomlens report ({len(entries)} run{'s' if len(entries) != 1 else ''})</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>phantomlens report</h1>"
        f"<p class=meta>phantomlens {_e(__version__)} · generated {stamp} · "
        "Φ = F<sub>target</sub> − F<sub>competitor</sub> = signal + drag; a jump is a <i>phantom</i> when "
        "the softmax readout, not the embedding geometry, carries it. Formulas are this project's own "
        "definitions built on the abstract of Prakash &amp; Dontabhaktuni (arXiv 2606.07559).</p>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


def write_report(run_dirs: list[str | Path], out: str | Path, facts: Iterable[str] | None = None) -> Path:
    out = Path(out)
    write_bytes_atomic(out, build_report(run_dirs, facts).encode())
    return out
