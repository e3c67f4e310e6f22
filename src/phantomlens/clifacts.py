"""The command line's words for fact sets: the per-fact table of a run, and its re-analysis.

Kept apart from ``phantomlens.cli`` so that each stays readable; nothing heavy is imported here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from phantomlens.factpredict import FactSetPrediction
    from phantomlens.factresults import FactSetSummary
    from phantomlens.factrun import FactSetResult
    from phantomlens.settings import AnalysisConfig, RunConfig


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


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
    source = f"{_plural(summary.n_facts, 'fact')} from {run.facts}" if run.facts else "1 fact (--context)"
    ahead = sum(f.margin_initial > 0 for f in summary.facts)
    lines = [
        f"facts     {source} on {run.model} ({run.mode}, η={run.peak_lr:g}, T={run.steps})",
        f"status    {summary.status}" + (f" ({summary.status_reason})" if summary.status_reason else ""),
        f"flipped   {summary.n_flipped} of {summary.n_facts} at the end ({summary.fraction_flipped:.0%})"
        + (f"; {ahead} of the {summary.n_facts} already had the target ahead at step 0" if ahead else ""),
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


def reanalyze_fact_set(
    run_dir: str | Path, config: AnalysisConfig | None = None, *, overwrite: bool = False
) -> FactSetResult:
    """Redo every fact's transitions analysis; rewrite events.json, summary.json and the overview
    (everything is read and computed before anything is written; a changed stored analysis is
    refused unless ``overwrite``: ``phantomlens.rundir.reanalyze``)."""
    from phantomlens.rundir import reanalyze

    return reanalyze(run_dir, config, overwrite=overwrite)  # type: ignore[return-value]


def _eta(value: float | None) -> str:
    return "never" if value is None else f"{value:.3g}"


def format_fact_prediction(p: FactSetPrediction) -> str:
    """``predict --facts``: a row per fact, the set's quantile, the interference, the cost."""
    rows = [
        [
            f.name,
            f"{f.target_tokens}/{f.competitor_tokens}",
            str(f.branch),
            f"{f.margin_initial:+.3g}",
            _eta(f.eta_c_single),
            _eta(f.eta_c_joint),
            f"{f.seconds:.2f}",
        ]
        for f in p.facts
    ]
    header = ["fact", "tokens", "k*", "m0", "eta_c alone", "eta_c in set", "seconds"]
    lines = [
        f"facts     {p.n_facts} on {p.model} ({p.mode}, {p.optimizer}, {p.schedule}, T={p.steps}); "
        f"κ = {p.kappa:.4g} ({p.kappa_source})",
        "",
        table(rows, header),
        "",
        f"set       η̂_c(F, q={p.quantile:g}) = {_eta(p.eta_c_joint_set)} trained together; "
        f"{_eta(p.eta_c_single_set)} from the facts alone",
    ]
    pairs = [(f.eta_c_single, f.eta_c_joint) for f in p.facts if f.eta_c_single and f.eta_c_joint]
    if pairs:
        import statistics

        ratio = statistics.median(joint / alone for alone, joint in pairs)
        lines.append(
            f"interference  median η̂ in set / η̂ alone = {ratio:.3g} (1 = the facts do not interfere)"
        )
    lines.append(
        f"cost      {p.seconds_per_fact:.3g} s per fact ({p.passes['forward']} forward + "
        f"{p.passes['backward']} backward passes); model unchanged"
    )
    return "\n".join(lines)


def predict_fact_file(config: RunConfig, args: argparse.Namespace) -> int:
    """``phantomlens predict --facts F``: the model loaded once, every fact predicted."""
    from phantomlens.atomic import check_not_an_input, check_output_file, write_bytes_atomic
    from phantomlens.errors import PhantomLensError
    from phantomlens.factpredict import predict_facts

    if args.variant != "first-order":
        raise PhantomLensError("facts are predicted first-order; leave out --variant with --facts")
    if args.csv is not None:
        check_output_file(Path(args.csv))  # before the model is loaded, not after
        check_not_an_input(Path(args.csv), [Path(config.facts)])
    prediction = predict_facts(config, kappa=args.kappa, calibration=args.calibration, quantile=args.quantile)
    if args.csv is not None:
        import pandas as pd

        frame = pd.DataFrame([f.to_dict() for f in prediction.facts])
        write_bytes_atomic(Path(args.csv), frame.to_csv(index=False).encode())
    if args.json:
        print(prediction.to_json())
        return 0
    print(format_fact_prediction(prediction))
    if args.csv is not None:
        print(f"written   {args.csv}")
    return 0
