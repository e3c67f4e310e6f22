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


#: How PhantomCallback's export begins its notes (phantomlens.callbackrun.finish writes it).
CALLBACK_NOTE = "recorded by PhantomCallback inside "


def fact_source(summary: FactSetSummary) -> str:
    """Which facts a fact-set run trained and where they came from, in words (``analyze`` and
    ``report`` both say it): a fact file, PhantomCallback inside a trainer, or ``--context``."""
    run, count = summary.run_config(), _plural(summary.n_facts, "fact")
    if run.facts:
        return f"{count} from {run.facts}"
    note = next((n for n in summary.notes if n.startswith(CALLBACK_NOTE)), None)
    if note is not None or run.context is None:  # the callback's config names no facts nor context
        # "a Hugging Face Trainer (optim …)" → "Hugging Face Trainer"
        trainer = note.removeprefix(CALLBACK_NOTE).split(" (")[0].removeprefix("a ") if note else ""
        return f"{count} watched by PhantomCallback" + (f" ({trainer})" if trainer else "")
    return f"{count} (--context)"


def format_fact_set(summary: FactSetSummary, *, written: bool = True) -> str:
    """A fact-set run in words: the headline, every fact's outcome, the silent failures by name
    (``written``: end with the line naming the run directory)."""
    run = summary.run_config()
    source = fact_source(summary)
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
    if written and summary.out_dir:
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


def safe_lr(p: FactSetPrediction, margin_safe: float) -> float | None:
    """The smallest peak LR at which a fraction q of the facts reach ``margin_safe``, each fact's
    final margin first-order along the set's joint direction: m_T(η) = m0 + κ·η·A·Σs (the model
    η̂_c(F, q) solves for margin 0); None when too few facts' margins move up."""
    from phantomlens.factpredict import set_quantile

    def reach(margin: float, velocity: float) -> float | None:
        if margin >= margin_safe:
            return 0.0
        return None if velocity <= 0 else (margin_safe - margin) / (p.kappa * velocity * p.schedule_sum)

    return set_quantile([reach(f.margin_initial, f.velocity_joint) for f in p.facts], p.quantile)


def knife_edge(margin_safe: float, edge: str) -> str:
    """Why the LR to use is not η_c itself (``edge``: where the margin ends at 0); with margin_safe ≤ 0
    the LR to use lies at or below η_c, and the words must not promise a flip."""
    if margin_safe > 0:
        return f"{edge}, a knife edge"
    return "margin_safe ≤ 0: at this LR a target need not overtake its competitor"


def _use_line(p: FactSetPrediction, margin_safe: float | None) -> str:
    """What LR to train the set at: the one reaching margin_safe, η̂_c(F, q) being a knife edge."""
    edge = f"at η̂_c(F, q) = {_eta(p.eta_c_joint_set)} they end at margin 0"
    if margin_safe is None:
        return f"use       above η̂_c(F, q): {edge}, a knife edge"
    some = f"{p.quantile:g} of the facts"
    which, verb, has = ("every fact", "reaches", "has") if p.quantile >= 1 else (some, "reach", "have")
    lr = safe_lr(p, margin_safe)
    if lr is None:
        return (
            f"use       none: in the first-order model no LR brings {which} to margin_safe = {margin_safe:g}"
        )
    if lr == 0:  # safe_lr: that many facts start at or above margin_safe
        return f"use       any LR: {which} already {has} margin ≥ margin_safe = {margin_safe:g} at step 0"
    return (
        f"use       lr {lr:.4g}: the smallest at which {which} {verb} margin_safe = {margin_safe:g} "
        f"(first-order, trained together; {knife_edge(margin_safe, edge)})"
    )


def format_fact_prediction(p: FactSetPrediction, margin_safe: float | None = None) -> str:
    """``predict --facts``: a row per fact, the set's quantile, the interference, the LR to use
    (``margin_safe``: the final margin it must reach), the cost."""
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
    lines.append(_use_line(p, margin_safe))
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
    print(format_fact_prediction(prediction, config.stop.margin_safe))
    if args.csv is not None:
        print(f"written   {args.csv}")
    return 0
