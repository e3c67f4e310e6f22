"""The ``phantomlens`` command line. Flags come from the library's config dataclasses.

Exit codes: 0 success (a diverged run is a recorded outcome, so also 0), 2 bad input or usage
(one line on stderr starting with ``error:``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from phantomlens.atomic import strict_json
from phantomlens.clifacts import table
from phantomlens.errors import PhantomLensError, one_line

if TYPE_CHECKING:
    from phantomlens.results import RunEvents, RunSummary
    from phantomlens.transitions import Jump


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # `sweep --context` must not pass for `--contexts`
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, no usage dump
        raise PhantomLensError(f"{message} (see {self.prog} --help)")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """phantomlens's own warnings as one ``warning:`` line; dependencies' warnings are not shown
    (their deprecation notices say nothing to a user of this command)."""
    text = str(message)
    if not text.startswith("phantomlens:") and f"{os.sep}phantomlens{os.sep}" not in str(filename):
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
    if args.out is not None and not args.out.strip():
        raise PhantomLensError("--out is empty; give the run directory to write, or leave it out")
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
        return 0
    print(format_run_summary(result.summary))
    if result.events.jumps:
        print()
        print(format_events(result.events))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from phantomlens.clifacts import format_fact_set, reanalyze_fact_set
    from phantomlens.config import from_namespace
    from phantomlens.factresults import is_fact_set
    from phantomlens.factrun import FactSetResult
    from phantomlens.results import EVENTS_FILE, PLOT_FILE, SUMMARY_FILE, load_run_dir
    from phantomlens.rundir import reanalyze
    from phantomlens.settings import AnalysisConfig

    config = from_namespace(AnalysisConfig, args)
    for run_dir in args.run_dirs:  # every directory is read and validated before any is rewritten
        FactSetResult.load(run_dir) if is_fact_set(run_dir) else load_run_dir(run_dir)
    analysed = []
    for run_dir in args.run_dirs:
        if is_fact_set(run_dir):
            result = reanalyze_fact_set(run_dir, config)
            analysed.append(result.events.to_dict())
            if not args.json:
                print(format_fact_set(result.summary) + "\n")
            continue
        result = reanalyze(run_dir, config)
        analysed.append(result.events.to_dict())
        if args.json:
            continue
        ctx, run = result.summary.context, result.config
        print(
            f"{run_dir}: {ctx.text!r} → {ctx.target!r} vs {ctx.competitor!r} ({run.mode}, η={run.peak_lr:g})"
        )
        print(format_events(result.events))
        print(f"written   {EVENTS_FILE}, {SUMMARY_FILE} and {PLOT_FILE} in {run_dir}\n")
    if args.json:  # one run: its events object; several: a list of them, in the order given
        print(strict_json(analysed[0] if len(analysed) == 1 else analysed), end="")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from phantomlens.config import from_namespace
    from phantomlens.settings import SweepConfig
    from phantomlens.sweep import Sweep

    config = from_namespace(SweepConfig, args)
    sweep = Sweep(config, args.out)  # a bad fact file or setting fails here, before any model loads
    table = sweep.run(progress=None if not args.json else False)
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
            _fmt(r.eta_c_predicted_kappa1),
            r.note,
        ]
        for r in table.itertuples()
    ]
    print(_table(rows, [what, "eta_c", "low", "high", "eta_max", "runs", "predicted(κ=1)", "note"]))
    if config.joint:  # what the set's η_c rests on: the fraction flipped at every LR tried
        name = sweep.contexts[0]
        tried = sorted(sweep.records(name).items())
        print("flipped   " + ", ".join(f"{r.fraction_flipped:.0%} at {_fmt(lr)}" for lr, r in tried))
    print(f"written   {Path(args.out) / 'critical_lr.parquet'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from phantomlens.config import from_namespace
    from phantomlens.predict import predict_critical_lr
    from phantomlens.settings import RunConfig

    config = from_namespace(RunConfig, args)
    if config.facts is not None:
        from phantomlens.clifacts import predict_fact_file

        return predict_fact_file(config, args)
    if args.csv is not None or args.quantile != 1.0:
        raise PhantomLensError("--csv and --quantile go with --facts FILE")
    prediction = predict_critical_lr(
        config, kappa=args.kappa, calibration=args.calibration, variant=args.variant
    )
    if args.json:
        print(prediction.to_json())
        return 0
    p = prediction
    ctx = p.context
    print(f"context   {ctx['text']!r} → {ctx['target']!r} vs {ctx['competitor']!r}")
    print(f"run       {p.model}, {p.mode}, {p.optimizer}, {p.schedule}, T={p.steps}")
    print(
        f"margin    m0 = {p.margin_initial:+.4f}; moves by A = {p.margin_velocity:.6g} per step per unit LR"
    )
    if p.eta_c is None:
        print("eta_c     none: at step 0 the update moves the margin away from the flip (A ≤ 0)")
    else:
        print(f"eta_c     {p.eta_c:.4g}  ({p.variant}; κ = {p.kappa:.4g}, {p.kappa_source})")
        two = "none" if p.eta_c_two_point is None else f"{p.eta_c_two_point:.4g}"
        print(
            f"          κ = 1: first-order {p.eta_c_first_order:.4g}, simulated {p.eta_c_simulated:.4g}, "
            f"two-point {two}"
        )
    print(
        f"cost      {p.passes['forward']} forward + {p.passes['backward']} backward passes; model unchanged"
    )
    return 0


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
        lines.append(f"stopped   early: {s.stop_reason}")
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
    return parser


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
    run.add_argument("--out", help="run directory to write (default: runs/<model>-<context>-<mode>-lr<η>)")
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
    report.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
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
        help="measure η_c (and η_max) per context or per fact by bisection",
        description="Bracket and bisect the critical learning rate in log-LR, per built-in context, "
        "per fact of --facts FILE (each trained alone), or of the whole set with --joint: "
        "η_c(F, q), the smallest peak LR at which at least a fraction q of the facts end flipped. "
        "Resumable: rerun the same command to continue a killed sweep.",
    )
    add_arguments(sweep, SweepConfig, exclude=PER_RUN_FIELDS)
    sweep.add_argument("--out", required=True, help="sweep directory (created, or resumed)")
    sweep.add_argument("--json", action="store_true", help="print the sweep summary JSON")
    sweep.set_defaults(func=cmd_sweep)


def _add_predict(sub) -> None:
    from phantomlens.config import add_arguments
    from phantomlens.results import VARIANTS
    from phantomlens.settings import PREDICT_IGNORES, RunConfig

    predict = sub.add_parser(
        "predict",
        help="predict η_c from one forward and two backward passes",
        description="Predict the critical learning rate of a run without training it.",
    )
    add_arguments(predict, RunConfig, exclude=PREDICT_IGNORES)
    predict.add_argument("--calibration", help="κ from a calibration file (phantomlens calibrate)")
    predict.add_argument("--kappa", type=float, help="κ given directly (default: 1, or the calibration's)")
    predict.add_argument(
        "--variant",
        choices=VARIANTS,
        default="first-order",
        help="which prediction is the headline (all three are computed and printed): first-order, "
        "the formula of docs/critical-lr.md; simulated, the margin followed through Adam's shrinking "
        "step; two-point, the margin velocity re-measured half-way (default: first-order)",
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
    calibrate.add_argument(
        "--out", default="calibration.json", help="calibration file to write (default: calibration.json)"
    )
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
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(
            "error: interrupted; no incomplete result was left behind (rerun to resume a sweep)",
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


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
