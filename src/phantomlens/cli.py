"""The ``phantomlens`` command line. Flags come from the library's config dataclasses.

Exit codes: 0 success (a diverged run is a recorded outcome, so also 0), 2 bad input or usage
(one line on stderr starting with ``error:``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from phantomlens.atomic import strict_json
from phantomlens.clifacts import knife_edge, table
from phantomlens.errors import PhantomLensError, one_line

if TYPE_CHECKING:
    from collections.abc import Iterator

    from phantomlens.results import RunEvents, RunSummary
    from phantomlens.transitions import Jump


def _output_path(text: str) -> str:
    """An --out value: an empty one would silently mean the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a path")
    return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `sweep --context` must not pass for `--contexts`
        super().__init__(*args, **kwargs)
        # argparse's test for a negative number knows no exponent, so `--margin-safe -1e9` read -1e9 as
        # an option and failed with "expected one argument". No flag of ours starts with a digit or
        # spells inf or nan, so such an argument is a value (one the field refuses is reported as such).
        self._negative_number_matcher = re.compile(r"^-(\.?\d|inf|nan)", re.IGNORECASE)

    def error(self, message: str):  # one line, no usage dump
        raise PhantomLensError(f"{message} (see {self.prog} --help)")


#: The package's own source folder: a warning raised from a file in it is ours.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """phantomlens's own warnings as one ``warning:`` line; dependencies' warnings are not shown
    (their deprecation notices say nothing to a user of this command).

    Ours means the text says so or the file is in this package's folder; a folder merely named
    phantomlens is not enough, since a checkout of that name holds the dependencies' virtualenv too.
    """
    text = str(message)
    if not text.startswith("phantomlens:") and not os.path.abspath(str(filename)).startswith(_PACKAGE_DIR):
        return
    print(f"warning: {text.removeprefix('phantomlens: ')}", file=sys.stderr)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


_table = table  # one table layout for every command (phantomlens.clifacts)


# --- run ---------------------------------------------------------------------------------------


def _default_out(config) -> Path:
    name = config.context if config.context and " " not in config.context else "custom"
    if config.facts:
        name = "facts-" + Path(config.facts).stem
    return Path("runs") / f"{config.model.replace('/', '_')}-{name}-{config.mode}-lr{config.peak_lr:g}"


def cmd_run(args: argparse.Namespace) -> int:
    from phantomlens.config import from_namespace
    from phantomlens.settings import AnalysisConfig, RunConfig
    from phantomlens.train import finetune

    config = from_namespace(RunConfig, args)
    out = Path(args.out) if args.out is not None else _default_out(config)
    result = finetune(
        config,
        out=out,
        overwrite=args.overwrite,
        progress=None if not args.json else False,
        analysis=from_namespace(AnalysisConfig, args),
    )
    if args.json:
        print(result.summary.to_json())
        return 0
    if not hasattr(result.summary, "context"):  # a fact-set run
        from phantomlens.clifacts import format_fact_set

        print(format_fact_set(result.summary))
        if result.summary.stopped_early:
            print(_stopped(result.summary))
        return 0
    print(format_run_summary(result.summary))
    if result.events.jumps:
        print()
        print(format_events(result.events))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from phantomlens.config import from_namespace
    from phantomlens.rundir import reanalysis
    from phantomlens.settings import AnalysisConfig

    config = from_namespace(AnalysisConfig, args)
    # Every directory is read, validated and analysed, and a change to its stored results refused
    # (unless --overwrite), before any directory is written.
    pending = [reanalysis(run_dir, config) for run_dir in args.run_dirs]
    for analysis in pending:
        analysis.check(overwrite=args.overwrite)
    for analysis in pending:
        analysis.write(overwrite=args.overwrite)
        if not args.json:
            print(_format_analysis(analysis) + "\n")
    if args.json:  # one run: its events object; several: a list of them, in the order given
        analysed = [a.result.events.to_dict() for a in pending]
        print(strict_json(analysed[0] if len(analysed) == 1 else analysed), end="")
    return 0


def _format_analysis(analysis) -> str:
    """``analyze``'s words for one directory: the analysis, then what was written and why."""
    result, run_dir = analysis.result, analysis.run_dir
    if hasattr(result.summary, "context"):
        ctx, run = result.summary.context, result.config
        what = f"{ctx.text!r} → {ctx.target!r} vs {ctx.competitor!r} ({run.mode}, η={run.peak_lr:g})"
        text = f"{run_dir}: {what}\n{format_events(result.events)}"
    else:
        from phantomlens.clifacts import format_fact_set

        text = format_fact_set(result.summary, written=False)  # the lines below say what was written
    written = [name for name in analysis.files if name in analysis.writes]
    if analysis.changed:
        return text + (
            f"\nwritten   {', '.join(written)} and {analysis.figure} in {run_dir} "
            f"(the stored analysis replaced: {', '.join(analysis.fields)})"
        )
    if written:
        return text + f"\nwritten   {', '.join(written)} and {analysis.figure} in {run_dir}"
    # nothing else written: a read-only run directory can be analysed (rundir.Reanalysis)
    done = f"{analysis.figure} was missing, drawn in {run_dir}" if analysis.writes else "nothing written"
    return text + f"\nunchanged the stored {' and '.join(analysis.files)} already hold this analysis; {done}"


def cmd_sweep(args: argparse.Namespace) -> int:
    from phantomlens.config import from_namespace
    from phantomlens.settings import SweepConfig
    from phantomlens.sweep import Sweep

    config = from_namespace(SweepConfig, args)
    sweep = Sweep(config, args.out)  # a bad fact file or setting fails here, before any model loads
    table = sweep.run(progress=None)  # a line per finished run on stderr, even with --json
    if args.json:
        from phantomlens.results import load_sweep_summary

        print(load_sweep_summary(args.out).to_json())
        return 0
    what = "fact set" if config.joint else "fact" if config.fact_file else "context"
    if config.grid:
        lrs = sorted(table["lr"].unique())
        cells = {(r.context, r.lr): r.outcome for r in table.itertuples()}
        rows = [[c, *(cells.get((c, lr), "-") for lr in lrs)] for c in dict.fromkeys(table["context"])]
        print(_table(rows, [what, *(_fmt(lr) for lr in lrs)]))
        print(f"written   {Path(args.out) / 'grid.parquet'}")
        return 0
    rows = [
        [
            r.context,
            _fmt(r.eta_c),
            _fmt(r.bracket_low),
            _fmt(r.bracket_high),
            _fmt(r.eta_max),
            str(r.runs_used),
            r.search,  # which search the runs are the path of, and how many it used for η_c
            "-" if r.runs_eta_c is None or math.isnan(r.runs_eta_c) else f"{r.runs_eta_c:.0f}",
            _fmt(getattr(r, "eta_c_predicted_start_kappa1", r.eta_c_predicted_kappa1)),
            r.note,
        ]
        for r in table.itertuples()
    ]
    header = [what, "eta_c", "low", "high", "eta_max", "runs", "search", "runs(η_c)", "predicted(κ=1)"]
    print(_table(rows, [*header, "note"]))
    if config.joint:  # what the set's η_c rests on: the fraction flipped at every LR tried
        name = sweep.contexts[0]
        tried = sorted(sweep.records(name).items())
        print("flipped   " + ", ".join(f"{r.fraction_flipped:.0%} at {_fmt(lr)}" for lr, r in tried))
    print(f"written   {Path(args.out) / 'critical_lr.parquet'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from phantomlens.atomic import check_output_file, write_bytes_atomic
    from phantomlens.config import from_namespace
    from phantomlens.predict import predict_critical_lr
    from phantomlens.results import DEFAULT_REFRESHES
    from phantomlens.settings import RunConfig

    config = from_namespace(RunConfig, args)
    if config.facts is not None:
        from phantomlens.clifacts import predict_fact_file

        if args.plot is not None:
            raise PhantomLensError("--plot draws one context's prediction; leave it out with --facts")
        if args.refreshes is not None or args.variant == "replay":
            raise PhantomLensError(
                "the replay (--variant replay, --refreshes) predicts one single-token context; "
                "a fact file is predicted first-order: leave them out with --facts"
            )
        args.variant = args.variant or "first-order"  # a fact file is predicted first-order
        return predict_fact_file(config, args)
    if args.csv is not None or args.quantile != 1.0:
        raise PhantomLensError("--csv and --quantile go with --facts FILE")
    if args.plot is not None:
        check_output_file(Path(args.plot))  # before the model is loaded, not after
    with _replay_progress():
        prediction = predict_critical_lr(
            config,
            kappa=args.kappa,
            calibration=args.calibration,
            variant=args.variant,
            curve=args.plot is not None,
            refreshes=DEFAULT_REFRESHES if args.refreshes is None else args.refreshes,
        )
    if args.plot is not None:
        from phantomlens.plot import figure_png, prediction_figure

        write_bytes_atomic(Path(args.plot), figure_png(prediction_figure(prediction)))
    if args.json:
        print(prediction.to_json())
        return 0
    print("\n".join(_prediction_lines(prediction)))
    if args.plot is not None:
        print(f"written   {args.plot}")
    return 0


@contextlib.contextmanager
def _replay_progress() -> Iterator[None]:
    """On a terminal, a bar counting the replays' optimiser steps: a full-FT prediction on a CPU
    spends minutes there. Nothing when stderr is not a terminal (tqdm's ``disable=None``)."""
    from tqdm import tqdm

    from phantomlens.replay import REPLAY_PROGRESS

    bar = tqdm(desc="replaying the run", unit=" steps", disable=None, leave=False, file=sys.stderr)
    token = REPLAY_PROGRESS.set(bar.update)
    try:
        yield
    finally:
        REPLAY_PROGRESS.reset(token)
        bar.close()


def _prediction_lines(p) -> list[str]:
    """``predict`` in words: the headline η̂_c with its interval, the LR to use, what they rest on."""

    def g(value: float | None) -> str:
        return "none" if value is None else f"{value:.4g}"

    ctx = p.context
    shown = p.warmup_fraction is not None and p.schedule != "constant"
    warmup = f", warm-up {p.warmup_fraction:g}" if shown else ""
    lines = [
        f"context   {ctx['text']!r} → {ctx['target']!r} vs {ctx['competitor']!r}",
        f"run       {p.model}, {p.mode}, {p.optimizer}, {p.schedule}{warmup}, T={p.steps}",
        f"margin    m0 = {p.margin_initial:+.4f}; moves by A = {p.margin_velocity:.6g} per step per unit LR",
    ]
    if p.eta_c is None and p.variant_note is None:
        lines.append("eta_c     none: at step 0 the update moves the margin away from the flip (A ≤ 0)")
    else:
        lines.append(f"eta_c     {g(p.eta_c)}  ({p.variant}; κ = {p.kappa:.4g}, {p.kappa_source})")
        if p.eta_c_low is not None:
            lines.append(
                f"          interval {p.eta_c_low:.4g} – {p.eta_c_high:.4g}: "
                f"η̂_c·exp(±{p.kappa_log_std:.3g}), κ's spread (std of log κ) over the calibration's contexts"
            )
        blind = _blind_words(p)
        if blind:
            lines.append(f"          {blind}")
        lines.append(
            f"          κ = 1: first-order {g(p.eta_c_first_order)}, simulated {g(p.eta_c_simulated)}, "
            f"two-point {g(p.eta_c_two_point)}"
            + (f", replay (K = {p.replay_refreshes}) {g(p.eta_c_replay)}" if p.replay_refreshes else "")
        )
    lines += [f"note      {note}" for note in (p.variant_note, p.kappa_note, p.precision_note) if note]
    if p.margin_safe is not None:  # a prediction stored before LRs were recommended has none
        lines.append(_use_line(p))
    lines.append(f"cost      {_cost_words(p)}; model unchanged")
    return lines


def _blind_words(p) -> str | None:
    """How far the shipped κ's own blind test (κ from the other models) missed with this variant and
    mode: the interval is κ's spread, and a user should also see the worst miss."""
    from phantomlens.kappa import SHIPPED_WHERE, shipped_calibration

    if not (p.kappa_source or "").startswith(SHIPPED_WHERE):
        return None
    key = f"{p.mode}/{p.optimizer}/{p.variant}"
    rows = [b for b in shipped_calibration().get("blind") or [] if b.get("key") == key]
    if not rows:
        return None
    medians = sorted(b["median_abs_error"] for b in rows)
    worst = max(b["max_abs_error"] for b in rows)
    spread = f"{medians[0]:.1%}" if len(rows) == 1 else f"{medians[0]:.1%}–{medians[-1]:.1%}"
    contexts = sum(b["n"] for b in rows)
    return (
        f"blind test of this κ (each model predicted with κ from the others): median |error| {spread} "
        f"by model, worst {worst:.1%} of {contexts} contexts"
    )


def _cost_words(p) -> str:
    """Passes, and for the replay the optimiser steps, which on a CPU can cost more than the passes."""
    words = f"{p.passes['forward']} forward + {p.passes['backward']} backward passes"
    if not p.replay_refreshes:
        return words
    return f"{words}, and {p.replays_run()} replays of {p.steps} optimiser steps (K = {p.replay_refreshes})"


def _use_line(p) -> str:
    """The LR to use, in words: the smallest reaching margin_safe, any (m0 already does), or none."""
    safe = p.margin_safe
    if p.eta_recommended is None:
        return f"use       none: in the {p.variant} model the margin stays below {safe:g}"
    if p.eta_recommended == 0:  # predict: MarginModel.reaching is 0 when m0 ≥ margin_safe
        return (
            f"use       any LR: the margin is already ≥ margin_safe = {safe:g} at step 0 "
            f"(m0 = {p.margin_initial:+.4g})"
        )
    # only a measured spread of κ was allowed for (predict._headline: κ·e^−σ); κ given or κ = 1 has none
    spread = ", even with κ at the low end of its spread" if p.kappa_log_std else ""
    return (
        f"use       lr {p.eta_recommended:.4g}: the smallest whose predicted final margin reaches "
        f"margin_safe = {safe:g}{spread} ({knife_edge(safe, 'at η_c itself the run ends at margin 0')})"
    )


def cmd_calibrate(args: argparse.Namespace) -> int:
    from phantomlens.atomic import check_not_an_input, check_output_file, write_json_atomic
    from phantomlens.calibrate import calibrate

    check_output_file(Path(args.out))
    check_not_an_input(
        Path(args.out), [*map(Path, args.sweep_dirs), *([Path(args.facts)] if args.facts else [])]
    )
    result = calibrate(args.sweep_dirs, facts=args.facts)
    write_json_atomic(Path(args.out), result)
    if args.json:
        print(strict_json(result), end="")
        return 0
    rows = [
        [
            key,
            f"{k['value']:.4g}",
            str(k["n"]),
            _fmt(k["cv"], 3),
            _fmt(k["log_std"], 3),
            ", ".join(k["models"]),
        ]
        for key, k in result["kappa"].items()
    ]
    print(_table(rows, ["mode/optimiser", "κ", "contexts", "CV", "std log κ", "models"]))
    if result["blind"]:
        print()
        rows = [
            [b["key"], b["model"], str(b["n"]), f"{b['median_abs_error']:.1%}", f"{b['max_abs_error']:.1%}"]
            for b in result["blind"]
        ]
        print(_table(rows, ["mode/optimiser", "held-out model", "contexts", "median |error|", "max |error|"]))
    print(f"written   {args.out}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from phantomlens.classify import classify_geometry
    from phantomlens.models import load_model

    model, _ = load_model(args.model, trust_remote_code=args.trust_remote_code)
    result = classify_geometry(model, args.model, pairs=args.pairs, seed=args.seed)
    if args.json:
        print(strict_json(result.to_dict()), end="")
        return 0
    r = result
    print(f"model      {r.model}  (V = {r.vocab_size}, d = {r.hidden_size}; {r.pairs} pairs, seed {r.seed})")
    print(f"overlap    mean G = {r.mean_overlap:.4f}, mean G² = {r.mean_squared_overlap:.4f}")
    print(f"crowding   χ = d·E[G²] = {r.crowding:.1f}  (1 = isotropic; χ/d = {r.mean_squared_overlap:.3f})")
    print(f"dimension  effective {r.effective_dimension:.1f} = {r.effective_dimension_fraction:.1%} of d")
    kind = "crowded city" if r.geometry_class == "A" else "open field"
    print(f"class      {r.geometry_class} ({kind}; boundary χ/d = {r.boundary})")
    print(f"LoRA       predicted {'sufficient' if r.lora_sufficient_predicted else 'NOT sufficient'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from phantomlens.atomic import check_not_an_input, check_output_file
    from phantomlens.report import read_fact_names, write_report

    check_output_file(Path(args.out))
    check_not_an_input(
        Path(args.out), [*map(Path, args.run_dirs), *([Path(args.facts)] if args.facts else [])]
    )
    # the list is read before any run, so a bad --facts file fails before minutes of drawing
    names = read_fact_names(args.facts) if args.facts else None
    out = write_report(args.run_dirs, args.out, facts=names)
    print(f"written {out} ({len(args.run_dirs)} run{'s' if len(args.run_dirs) != 1 else ''})")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from phantomlens.glossary import explain_known

    text, unknown = explain_known(args.terms)
    if text:  # what is known first, then the one error line for the rest
        print(text)
    if unknown is not None:
        raise unknown
    return 0


def format_events(events: RunEvents) -> str:
    detail = events.outcome_detail
    lines = [
        f"outcome   {events.outcome}"
        + ("  (SILENT: the loss fell, the target never won)" if events.silent else "")
        + f"; loss fell {detail.loss_drop_fraction:.0%}, drag changed {detail.drag_change:+.4f}, "
        f"max signal {detail.signal_max:+.3f}",
    ]
    frozen = events.frozen_geometry
    if frozen.embeddings_unchanged:
        lines.append(
            "geometry  embeddings bit-identical (sha256 "
            f"{frozen.embedding_sha256[:12]}…): Γ = X = 0 exactly at every step"
        )
    t = events.thresholds
    if not events.jumps:
        lines.append("jumps     none (no step changed Φ suddenly)")
    else:
        header = ["steps", "ΔΦ", "R", "Γ", "X", "R/ΔΦ", "verdict", "margin", "v", "ΔΦ pred", "pred err"]
        lines.append(_table([_jump_row(j) for j in events.jumps], [*header, "sym.break"]))
        lines.append(
            f"          {events.n_phantom_jumps} of {events.n_jumps} jumps are phantoms "
            f"(|R| ≥ {t['phantom_fraction']}·|ΔΦ|): the change lives in the softmax "
            "readout, not in the embeddings."
            if events.n_phantom_jumps
            else f"          none of the {events.n_jumps} jumps is a phantom."
        )
    lines.append(
        f"thresholds jump |ΔΦ| ≥ {t['jump_min_abs']}, robust z ≥ {t['jump_min_z']}, share ≥ "
        f"{t['jump_min_share']} within ±{t['jump_context']}; phantom |R|/|ΔΦ| ≥ {t['phantom_fraction']}; "
        f"structural drag fall > {t['drag_worsening']}; silent loss drop ≥ {t['silent_loss_drop']:.0%}"
    )
    return "\n".join(lines)


def _stopped(s) -> str:
    """A run stopped early: after how many of its steps, and the rule's reason."""
    planned = s.run_config().steps
    return (
        f"stopped   EARLY after {s.steps_completed} of {planned} steps "
        f"({planned - s.steps_completed} not run): {s.stop_reason}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _jump_row(j: Jump) -> list[str]:
    return [
        f"{j.step_from}→{j.step}",
        f"{j.delta_phi:+.3f}",
        f"{j.readout:+.3f}",
        f"{j.geometric:+.1e}",
        f"{j.cross:+.1e}",
        f"{j.readout_fraction:.2f}",
        "PHANTOM" if j.phantom else "geometric",
        f"{j.margin_before:+.2f}→{j.margin_after:+.2f}",
        f"{j.margin_velocity:.2f}",
        f"{j.predicted_delta_phi:+.3f}",
        f"{j.prediction_error:+.0%}",
        "YES" if j.symmetry_breaking else "no",
    ]


def format_run_summary(s: RunSummary) -> str:
    ctx, run = s.context, s.run_config()
    lines = [
        f"context   {ctx.text!r} → {ctx.target!r} (target) vs {ctx.competitor!r} (competitor)",
        f"run       {run.model}, {run.mode}, {run.optimizer}, η={run.peak_lr:g}, "
        f"{run.schedule}, T={run.steps}, seed {run.seed}, {s.geometry} geometry",
    ]
    rows = [
        ["loss", _fmt(s.loss_initial), _fmt(s.loss_final)],
        ["margin", _fmt(s.margin_initial), _fmt(s.margin_final)],
        ["Φ", _fmt(s.phi_initial), _fmt(s.phi_final)],
        ["p(target)", "", _fmt(s.p_target_final)],
        ["p(competitor)", "", _fmt(s.p_competitor_final)],
    ]
    lines += ["", _table(rows, ["quantity", "step 0", "end"]), ""]
    if s.status == "diverged":
        lines.append(f"status    DIVERGED at step {s.diverged_step} ({s.status_reason})")
    else:
        lines.append(f"status    {s.status} ({s.steps_completed} steps, {s.wall_time_s} s)")
    lines.append(f"outcome   {s.outcome}" + ("  (silent: loss fell, no flip)" if s.silent else ""))
    if s.stopped_early:
        lines.append(_stopped(s))
    if s.flipped:
        held = "and holds at the end" if s.flipped_at_end else "but does NOT hold at the end"
        lines.append(f"flip      target overtook competitor at step {s.flip_step}, {held}")
    else:
        lines.append("flip      NO: the target never overtook the competitor")
    lines.append(
        f"jumps     {_count(s.n_jumps, 'catapult-like jump')} in Φ, {_count(s.n_phantom_jumps, 'phantom')}"
    )
    same = "bit-identical" if s.embeddings_unchanged else "changed"
    lines.append(
        f"embedding {same} (sha256 {s.embedding_sha256_start[:12]}… → {s.embedding_sha256_end[:12]}…)"
    )
    lines += [f"note      {note}" for note in s.notes]
    if s.out_dir:
        lines.append(f"written   {s.out_dir}/ (summary.json, trajectory.parquet, trajectory.png)")
    return "\n".join(lines)


# --- contexts ----------------------------------------------------------------------------------


CONTEXT_FIELDS = ("rank_target", "rank_competitor", "margin", "overlap_tc", "p_target", "p_competitor")


def cmd_contexts(args: argparse.Namespace) -> int:
    from phantomlens.contexts import builtin_contexts, resolve
    from phantomlens.models import load_model
    from phantomlens.readout import measure

    if args.facts is not None:
        return _list_facts(args)
    model, tokenizer = load_model(args.model)
    records = []
    for ctx in builtin_contexts():
        spec = resolve(tokenizer, ctx.text, ctx.target, ctx.competitor, model=model, warn=False)
        r = measure(model, tokenizer, ctx.text, spec.target, spec.competitor)
        valid = r.rank_competitor < r.rank_target
        records.append({**ctx.to_dict(), **{k: getattr(r, k) for k in CONTEXT_FIELDS}, "valid": valid})
    if args.json:
        print(strict_json({"model": args.model, "contexts": records}), end="")
        return 0
    rows = [
        [
            r["name"],
            r["text"] + " …",
            r["target"].strip(),
            r["competitor"].strip(),
            str(r["rank_target"]),
            str(r["rank_competitor"]),
            f"{r['margin']:+.2f}",
            f"{r['overlap_tc']:.3f}",
            "yes" if r["valid"] else "NO",
        ]
        for r in records
    ]
    print(f"{len(rows)} built-in contexts on {args.model} (step 0, raw geometry)\n")
    header = ["name", "context", "target", "competitor", "rank_t", "rank_c", "margin", "G_tc", "valid"]
    print(_table(rows, header))
    return 0


def _list_facts(args: argparse.Namespace) -> int:
    """``contexts --facts F``: each fact's tokens, branch position and step-0 sequence margin."""
    from phantomlens.facts import load_facts
    from phantomlens.facttrain import resolve_fact
    from phantomlens.forward import evaluation, sequence_margin
    from phantomlens.models import load_model

    facts = load_facts(args.facts)  # the whole file is checked before the model is loaded
    model, tokenizer = load_model(args.model, trust_remote_code=False)
    tokenized = [resolve_fact(tokenizer, model, fact) for fact in facts]
    records = []
    with evaluation(model):
        for t in tokenized:
            margin = float(sequence_margin(model, t.prompt_ids, t.target_ids, t.competitor_ids))
            records.append(
                {
                    **t.fact.to_dict(),
                    "target_tokens": len(t.target_ids),
                    "competitor_tokens": len(t.competitor_ids),
                    "branch": t.branch,
                    "margin": margin,
                    "valid": margin < 0,  # the competitor leads at step 0: there is a flip to make
                }
            )
    if args.json:
        print(strict_json({"model": args.model, "facts": records}), end="")
        return 0
    rows = [
        [
            r["name"] or r["prompt"][:40],
            *(str(r[key]) for key in ("target_tokens", "competitor_tokens", "branch")),
            f"{r['margin']:+.2f}",
            "yes" if r["valid"] else "NO (target already ahead)",
        ]
        for r in records
    ]
    print(
        f"{len(rows)} facts from {args.facts} on {args.model} (step 0; margin = ℓ(target) − ℓ(competitor))\n"
    )
    print(_table(rows, ["fact", "target tok", "competitor tok", "branch k*", "margin", "valid"]))
    return 0


# --- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from phantomlens.version import __version__

    parser = _Parser(
        prog="phantomlens",
        description="See, explain and predict silent near-synonym failures in language-model fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"phantomlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in (_add_run, _add_analyze, _add_report, _add_sweep, _add_predict):
        register(sub)
    _add_model_commands(sub)
    _add_explain(sub)
    return parser


def _add_explain(sub) -> None:
    explain = sub.add_parser(
        "explain",
        help="what a term of the output means (margin, kinematic, drag, Φ, κ, ...)",
        description="One line of plain words for each term the commands and logs print (a second where "
        "a fact of several tokens reads it differently); every term when none is named, the known "
        "ones first when some are not. Symbols may be spelt out (phi, kappa, eta_c).",
    )
    explain.add_argument("terms", nargs="*", metavar="TERM", help="terms to explain (default: all)")
    explain.set_defaults(func=cmd_explain)


def _add_run(sub) -> None:
    from phantomlens.config import add_arguments
    from phantomlens.settings import AnalysisConfig, RunConfig

    run = sub.add_parser(
        "run",
        help="one instrumented fine-tuning run (one context, or a fact file trained jointly)",
        description="Fine-tune on one context, or on every fact of --facts FILE jointly, and record the "
        "readout at every step.",
    )
    add_arguments(run, RunConfig)
    add_arguments(run.add_argument_group("transitions analysis"), AnalysisConfig)
    run.add_argument(
        "--out",
        type=_output_path,
        help="run directory to write (default: runs/<model>-<context>-<mode>-lr<η>)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    run.add_argument("--json", action="store_true", help="print summary.json to stdout")
    run.set_defaults(func=cmd_run)


def _add_analyze(sub) -> None:
    from phantomlens.config import add_arguments
    from phantomlens.settings import AnalysisConfig

    analyze = sub.add_parser(
        "analyze",
        help="jumps, phantom test and outcome of stored runs",
        description="Detect catapult-like jumps in Φ, decompose each into "
        "readout/geometric/cross parts, and classify the run's outcome.",
    )
    analyze.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    add_arguments(analyze, AnalysisConfig)
    analyze.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a stored analysis that this one changes (without it, such a directory is refused "
        "and nothing is written)",
    )
    analyze.add_argument("--json", action="store_true", help="print events.json to stdout")
    analyze.set_defaults(func=cmd_analyze)


def _add_report(sub) -> None:
    report = sub.add_parser(
        "report",
        help="one self-contained HTML page for one or more runs",
        description="Write one self-contained HTML page (figures inline, user text escaped) for runs.",
    )
    report.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (phantomlens run --out)"
    )
    report.add_argument(
        "--out", type=_output_path, default="report.html", help="HTML file to write (default: report.html)"
    )
    report.add_argument(
        "--facts",
        metavar="FILE",
        help="fact-set runs: give per-fact sections only to the facts in FILE (a .jsonl/.csv fact file, "
        "or one name per line); the overview and the table still cover every fact",
    )
    report.set_defaults(func=cmd_report)


def _add_sweep(sub) -> None:
    from phantomlens.config import add_arguments
    from phantomlens.settings import PER_RUN_FIELDS, SweepConfig

    sweep = sub.add_parser(
        "sweep",
        help="measure η_c (and η_max) per context or per fact, to 1%%",
        description="Find the critical learning rate in log-LR (root-finding on the runs' final "
        "margins, or with --search bisect on their verdicts), per built-in context, "
        "per fact of --facts FILE (each trained alone), or of the whole set with --joint: "
        "η_c(F, q), the smallest peak LR at which at least a fraction q of the facts end flipped. "
        "Resumable: rerun the same command to continue a killed sweep.",
    )
    add_arguments(sweep, SweepConfig, exclude=PER_RUN_FIELDS)
    sweep.add_argument(
        "--out", type=_output_path, required=True, help="sweep directory (created, or resumed)"
    )
    sweep.add_argument("--json", action="store_true", help="print the sweep summary JSON")
    sweep.set_defaults(func=cmd_sweep)


def _add_variant_arguments(predict) -> None:
    from phantomlens.results import DEFAULT_REFRESHES, DEFAULT_VARIANT, VARIANTS

    predict.add_argument(
        "--variant",
        choices=VARIANTS,
        default=None,
        help="which prediction is the headline (all are computed and printed): first-order, "
        "the formula of docs/critical-lr.md; simulated, the margin followed through Adam's shrinking "
        "step; two-point, the margin velocity re-measured half-way; replay, the run re-enacted by its "
        f"own optimiser with K measured gradients (default: {DEFAULT_VARIANT}, the most accurate in the "
        "stored blind test; first-order for a fact of several tokens)",
    )
    predict.add_argument(
        "--refreshes",
        type=int,
        default=None,
        metavar="K",
        help=f"the replay's gradient measurements K (default: {DEFAULT_REFRESHES}, about 20 passes in "
        "all; more is slower and closer to the run; 0 skips the replay)",
    )


def _add_predict(sub) -> None:
    from phantomlens.config import add_arguments
    from phantomlens.settings import PREDICT_IGNORES, RunConfig, StopRule

    predict = sub.add_parser(
        "predict",
        help="predict η_c and the LR to use, without training (a few forward and backward passes)",
        description="Predict the critical learning rate of a run without training it, with an interval "
        "and the smallest LR whose predicted final margin reaches --margin-safe.",
    )
    add_arguments(predict, RunConfig, exclude=PREDICT_IGNORES)
    predict.add_argument(
        "--calibration",
        help="κ from your calibration file (phantomlens calibrate) instead of the shipped one; "
        "either applies only to runs inside the domain it was fitted on",
    )
    predict.add_argument(
        "--kappa",
        type=float,
        help="κ given directly, from 0.001 to 1000 (default: the calibration's; --kappa 1: uncalibrated)",
    )
    _add_variant_arguments(predict)
    predict.add_argument(
        "--margin-safe",
        type=float,
        default=StopRule().margin_safe,
        help="the final margin (logits) the recommended LR must reach "
        f"(default: {StopRule().margin_safe:g}, the stop rule's)",
    )
    predict.add_argument(
        "--plot", metavar="FILE.png", help="draw the predicted final margin against LR to FILE.png"
    )
    predict.add_argument(
        "--quantile",
        type=float,
        default=1.0,
        help="with --facts: the fraction q of facts that must flip, for η̂_c(F, q) (default: 1)",
    )
    predict.add_argument(
        "--csv", metavar="FILE", help="with --facts: also write the per-fact table as CSV to FILE"
    )
    predict.add_argument("--json", action="store_true", help="print the prediction as JSON")
    predict.set_defaults(func=cmd_predict)


def _add_model_commands(sub) -> None:
    from phantomlens.settings import DEFAULT_MODEL

    calibrate = sub.add_parser(
        "calibrate",
        help="fit κ on sweeps; report its spread and the blind test",
        description="Fit κ (per mode, optimiser and variant) on measured sweeps; with several models, "
        "predict each model's contexts from the others (the blind test).",
    )
    calibrate.add_argument(
        "sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="sweep directories (phantomlens sweep --out)"
    )
    out_help = "calibration file to write (default: calibration.json)"
    calibrate.add_argument("--out", type=_output_path, default="calibration.json", help=out_help)
    calibrate.add_argument(
        "--facts", metavar="FILE", help="fit κ only on the rows of the facts of FILE (sweep --facts FILE)"
    )
    calibrate.add_argument("--json", action="store_true", help="print the calibration as JSON")
    calibrate.set_defaults(func=cmd_calibrate)

    classify = sub.add_parser(
        "classify",
        help="architecture class and LoRA-sufficiency prediction",
        description="Bulk statistics of the token states (crowding, effective dimension), the class they "
        "put the model in, and the LoRA-sufficiency prediction that class makes (see docs/critical-lr.md "
        "for how it fared on the built-in models).",
    )
    classify.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model to classify (default: {DEFAULT_MODEL})"
    )
    classify.add_argument(
        "--pairs", type=int, default=200_000, help="random token pairs sampled (default: 200000)"
    )
    classify.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    classify.add_argument(
        "--trust-remote-code",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="allow a hub model's own code to run (off by default)",
    )
    classify.add_argument("--json", action="store_true", help="print JSON")
    classify.set_defaults(func=cmd_classify)

    contexts = sub.add_parser(
        "contexts",
        help="list the built-in contexts with step-0 readouts",
        description="List the built-in contexts with the model's step-0 ranks, margin and overlap.",
    )
    contexts.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"model to read them with (default: {DEFAULT_MODEL})"
    )
    contexts.add_argument(
        "--facts",
        metavar="FILE",
        help="list the facts of a .jsonl or .csv file instead (prompt, target, competitor, name, chat): "
        "their token counts, branch position and step-0 sequence margin",
    )
    contexts.add_argument("--json", action="store_true", help="print JSON instead of a table")
    contexts.set_defaults(func=cmd_contexts)


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    previous = None
    try:
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` ends a run as Ctrl-C does
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            raise PhantomLensError(
                f"unrecognized arguments: {' '.join(unknown)} (see phantomlens {args.command} --help)"
            )
        from phantomlens.models import quiet_libraries

        quiet_libraries()
        return _run_with_hint(args)
    except KeyboardInterrupt:
        print(
            "error: interrupted; no incomplete result was left behind "
            "(rerun the command: a sweep resumes where it stopped)",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # every failure, ours or a dependency's or the OS's, is one line
        if os.environ.get("PHANTOMLENS_DEBUG") and not isinstance(exc, PhantomLensError):
            raise
        hint = "" if isinstance(exc, PhantomLensError) else " (PHANTOMLENS_DEBUG=1 shows the traceback)"
        print(f"error: {one_line(exc)}{hint}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_with_hint(args: argparse.Namespace) -> int:
    """Run the command; output for people ends with a line naming the glossary terms it printed."""
    if getattr(args, "json", False) or args.command == "explain":
        return int(args.func(args) or 0)
    printed = _Tee(sys.stdout)
    with contextlib.redirect_stdout(printed):
        code = int(args.func(args) or 0)
    from phantomlens.glossary import hint

    line = hint(printed.text())
    if code == 0 and line:
        print(line)
    return code


class _Tee:
    """A stdout that also keeps what was written (the hint is made from it)."""

    def __init__(self, stream) -> None:
        self.stream, self.parts = stream, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def text(self) -> str:
        return "".join(self.parts)

    def __getattr__(self, name: str):  # flush, fileno, isatty, encoding: the real stream's
        return getattr(self.stream, name)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
