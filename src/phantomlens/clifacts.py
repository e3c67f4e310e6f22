"""The command line's words for fact sets: the per-fact table of a run, and its re-analysis.

Kept apart from ``phantomlens.cli`` so that each stays readable; nothing heavy is imported here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from phantomlens.factresults import FactSetSummary
    from phantomlens.factrun import FactSetResult
    from phantomlens.settings import AnalysisConfig


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.{digits}g}" if isinstance(value, float) else str(value)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def format_fact_set(summary: FactSetSummary) -> str:
    """A fact-set run in words: the headline, every fact's outcome, the silent failures by name."""
    run = summary.run_config()
    source = run.facts or "one fact"
    lines = [
        f"facts     {summary.n_facts} from {source} on {run.model} "
        f"({run.mode}, η={run.peak_lr:g}, T={run.steps})",
        f"status    {summary.status}" + (f" ({summary.status_reason})" if summary.status_reason else ""),
        f"flipped   {summary.n_flipped} of {summary.n_facts} at the end ({summary.fraction_flipped:.0%})",
        f"loss      {summary.loss_initial:.4g} → {summary.loss_final:.4g} (mean over facts)",
        "outcomes  " + ", ".join(f"{name} {count}" for name, count in summary.outcomes.items()),
        "",
    ]
    rows = [
        [
            f.name,
            f.outcome + (" SILENT" if f.silent else ""),
            f"{_num(f.margin_initial)} → {_num(f.margin_final)}",
            "-" if f.flip_step is None else str(f.flip_step),
            f"{f.loss_initial:.3g} → {f.loss_final:.3g}",
            f"{len(f.target_tokens)}/{len(f.competitor_tokens)}",
            str(f.branch),
            f"{f.n_jumps} ({f.n_phantom_jumps} phantom)",
        ]
        for f in summary.facts
    ]
    header = ["fact", "outcome", "margin 0 → end", "flip", "loss 0 → end", "tokens", "k*", "jumps"]
    lines.append(table(rows, header))
    if summary.silent_failures:
        lines += ["", f"SILENT failures (loss fell, target never won): {', '.join(summary.silent_failures)}"]
    lines += [f"note      {note}" for note in summary.notes]
    if summary.out_dir:
        lines.append(f"written   {summary.out_dir}")
    return "\n".join(lines)


def reanalyze_fact_set(run_dir: str | Path, config: AnalysisConfig | None = None) -> FactSetResult:
    """Redo every fact's transitions analysis; rewrite events.json, summary.json and the overview
    (everything is read and computed before anything is written)."""
    from phantomlens.atomic import write_bytes_atomic
    from phantomlens.factrun import OVERVIEW_FILE, FactSetResult
    from phantomlens.plot import figure_png
    from phantomlens.results import EVENTS_FILE, SUMMARY_FILE

    run_dir = Path(run_dir)
    result = FactSetResult.load(run_dir).analyze(config)
    png = figure_png(result.plot())
    result.events.write(run_dir / EVENTS_FILE)
    write_bytes_atomic(run_dir / OVERVIEW_FILE, png)
    result.summary.write(run_dir / SUMMARY_FILE)
    return result
