"""The command line: the documented interface, and one-line errors for every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tiny_models import make_tiny, tiny_pair

from phantomlens.cli import main

TEXT = "She felt a deep sense of"


def pair():
    model, tokenizer = make_tiny("llama")
    return tiny_pair(model, tokenizer, TEXT)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_writes_directory_and_prints_json(tiny_dir, tmp_path, capsys):
    target, competitor = pair()
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        capsys,
        "run",
        "--model",
        tiny_dir,
        "--context",
        TEXT,
        "--target",
        target,
        "--competitor",
        competitor,
        "--mode",
        "lora",
        "--lr",
        "0.05",
        "--steps",
        "4",
        "--schedule",
        "constant",
        "--optimizer",
        "adamw",
        "--seed",
        "3",
        "--center",
        "--out",
        out,
        "--json",
    )
    assert code == 0
    summary = json.loads(stdout)
    assert summary["config"]["mode"] == "lora" and summary["config"]["seed"] == 3
    assert summary["geometry"] == "centred" and summary["embeddings_unchanged"]
    assert json.loads((out / "summary.json").read_text())["status"] == summary["status"]


def test_run_prints_a_readable_summary(tiny_dir, tmp_path, capsys):
    target, competitor = pair()
    code, stdout, _ = run_cli(
        capsys,
        "run",
        "--model",
        tiny_dir,
        "--context",
        TEXT,
        "--target",
        target,
        "--competitor",
        competitor,
        "--steps",
        "3",
        "--lr",
        "0.01",
        "--out",
        tmp_path / "r",
    )
    assert code == 0
    stored = json.loads((tmp_path / "r" / "summary.json").read_text())
    lines = {}
    for line in stdout.splitlines():
        key, _, rest = line.partition(" ")
        lines.setdefault(key, rest.strip())
    # The table: each printed number is the stored one, rounded at the precision printed.
    table = {
        "loss": ("loss_initial", "loss_final"),
        "margin": ("margin_initial", "margin_final"),
        "Φ": ("phi_initial", "phi_final"),
        "p(target)": (None, "p_target_final"),
        "p(competitor)": (None, "p_competitor_final"),
    }
    for quantity, fields in table.items():
        printed = lines[quantity].split()
        assert len(printed) == len([f for f in fields if f]), (quantity, printed)
        for text, field in zip(printed, [f for f in fields if f]):
            assert same_at_printed_precision(text, stored[field]), (quantity, field, text, stored[field])
    # This run flips (lr 0.01 on the tiny Llama), so the flip line has a step to report.
    assert stored["status"] == "completed" and stored["flipped"] and stored["flipped_at_end"]
    assert lines["status"].startswith(f"{stored['status']} ({stored['steps_completed']} steps, ")
    assert lines["outcome"] == stored["outcome"]
    assert lines["flip"] == f"target overtook competitor at step {stored['flip_step']}, and holds at the end"
    jumps, phantoms = stored["n_jumps"], stored["n_phantom_jumps"]
    assert lines["jumps"] == f"{jumps} catapult-like jumps in Φ, {phantoms} phantoms"
    start, end = stored["embedding_sha256_start"][:12], stored["embedding_sha256_end"][:12]
    same = "bit-identical" if stored["embeddings_unchanged"] else "changed"
    assert lines["embedding"] == f"{same} (sha256 {start}… → {end}…)"


def same_at_printed_precision(text: str, value: float) -> bool:
    """``text`` is ``value`` rounded to the digits ``text`` shows (half a unit in its last place)."""
    from decimal import Decimal

    printed = Decimal(text)
    half_unit = Decimal(5) * Decimal(10) ** (printed.as_tuple().exponent - 1)
    return abs(printed - Decimal(value)) <= half_unit * (1 + Decimal("1e-9"))


BAD_INPUTS = [
    (["--target", " remorsefulness"], "competitor must be given"),
    (["--target", " shame", "--competitor", "shame"], "same token as the target"),
    (["--context", "  ", "--target", " shame", "--competitor", " guilt"], "context is empty"),
    (["--target", " shame", "--competitor", " guilt", "--mode", "qlora"], "invalid choice"),
    (["--target", " shame", "--competitor", " guilt", "--lr", "0"], "positive finite"),
    (["--target", " shame", "--competitor", " guilt", "--lr", "abc"], "a number is needed"),
    (["--target", " shame", "--competitor", " guilt", "--steps", "0"], "at least 1"),
]


@pytest.mark.parametrize(("extra", "expected"), BAD_INPUTS)
def test_bad_input_is_one_error_line_and_no_directory(tiny_dir, tmp_path, capsys, extra, expected):
    argv = ["run", "--model", tiny_dir, "--out", tmp_path / "run"]
    if "--context" not in extra:
        argv += ["--context", TEXT]
    code, _stdout, stderr = run_cli(capsys, *argv, *extra)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0]
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run")]


OUT_COMMANDS = [["sweep", "--contexts", "shame"], ["run"], ["calibrate", "x"], ["report", "x"]]


@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_an_empty_out_is_refused_not_read_as_the_current_directory(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    code, _, stderr = run_cli(capsys, *command, "--out", " ")
    assert code == 2 and stderr.startswith("error: argument --out: is empty")
    assert len(stderr.splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_missing_and_unknown_models(tmp_path, capsys):
    code, _, stderr = run_cli(capsys, "run", "--model", "gpt-17", "--out", tmp_path / "r")
    assert code == 2 and stderr.startswith("error: unknown model 'gpt-17'")
    assert "smollm2-135m" in stderr and "gemma3-270m" in stderr
    code, _, stderr = run_cli(
        capsys, "run", "--model", str(tmp_path / "missing") + "/", "--out", tmp_path / "r"
    )
    assert code == 2 and stderr.startswith("error:")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    code, _, stderr = run_cli(capsys, "run", "--model", pickled, "--out", tmp_path / "r")
    assert code == 2 and "will not unpickle" in stderr


def test_competitor_below_target_warns_but_runs(tiny_dir, tmp_path, capsys):
    target, competitor = pair()
    code, _, stderr = run_cli(
        capsys,
        "run",
        "--model",
        tiny_dir,
        "--context",
        TEXT,
        "--target",
        competitor,
        "--competitor",
        target,
        "--steps",
        "2",
        "--out",
        tmp_path / "r",
        "--json",
    )
    assert code == 0 and "warning:" in stderr and "nothing to flip" in stderr


def test_divergence_is_a_recorded_outcome_with_exit_zero(tiny_dir, tmp_path, capsys):
    target, competitor = pair()
    code, stdout, _ = run_cli(
        capsys,
        "run",
        "--model",
        tiny_dir,
        "--context",
        TEXT,
        "--target",
        target,
        "--competitor",
        competitor,
        "--steps",
        "10",
        "--lr",
        "1e9",
        "--optimizer",
        "sgd",
        "--schedule",
        "constant",
        "--out",
        tmp_path / "r",
        "--json",
    )
    assert code == 0 and json.loads(stdout)["status"] == "diverged"


def test_entry_point_never_shows_a_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "phantomlens.cli",
            "run",
            "--model",
            "no-such-org/no-such-model",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: unknown model 'no-such-org/no-such-model'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --- feedback: no dependency noise, early stopping said, stored analyses kept -------------------


def run_argv(tiny_dir, out, *extra) -> list[str]:
    target, competitor = pair()
    return ["run", "--model", str(tiny_dir), "--context", TEXT, "--target", target,
            "--competitor", competitor, "--out", str(out), *map(str, extra)]  # fmt: skip


def test_a_run_prints_no_dependency_warning_or_bar(tiny_dir, tmp_path):
    """LoRA makes PEFT ask transformers for the deprecated ``is_gradient_checkpointing``; the
    command's stderr (not a terminal: no bar either) must stay empty even with every warning on."""
    argv = run_argv(tiny_dir, tmp_path / "r", "--mode", "lora", "--steps", "3", "--lr", "0.01")
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-m", "phantomlens.cli", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "always"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_the_library_silences_dependency_deprecations_at_the_source_only():
    """Inside a run the dependencies' deprecation notices are off; a library user's own warnings,
    and phantomlens's own, still show, and the user's warning settings are as they were after."""
    import warnings

    from phantomlens.models import dependency_noise_off
    from phantomlens.train import finetune

    model, tokenizer = make_tiny("llama")
    target, competitor = pair()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        finetune(model=model, tokenizer=tokenizer, context=TEXT, target=target, competitor=competitor,
                 mode="lora", steps=2, progress=False)  # fmt: skip
        with dependency_noise_off():
            warnings.warn_explicit("theirs", FutureWarning, "x.py", 1, module="transformers.modeling_utils")
            warnings.warn_explicit("ours", FutureWarning, "x.py", 1, module="phantomlens.train")
            warnings.warn_explicit("yours", DeprecationWarning, "x.py", 1, module="my_project")
        warnings.warn_explicit("theirs again", FutureWarning, "x.py", 1, module="transformers.x")
    assert [str(w.message) for w in seen] == ["ours", "yours", "theirs again"]


def test_dependency_noise_off_restores_transformers_bars_and_log_level():
    from transformers.utils import logging as hf_logging

    from phantomlens.models import dependency_noise_off

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    try:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity_warning()
        with dependency_noise_off():
            assert not hf_logging.is_progress_bar_enabled()  # no "Loading weights" bar
            assert hf_logging.get_verbosity() == hf_logging.ERROR
        assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == hf_logging.WARNING
    finally:
        hf_logging.set_verbosity(level)
        (hf_logging.enable_progress_bar if bars else hf_logging.disable_progress_bar)()


def test_only_phantomlenss_own_warnings_are_shown_even_in_a_checkout_named_phantomlens(capsys):
    from phantomlens import cli

    venv = os.path.join(os.sep, "home", "me", "phantomlens", ".venv", "lib", "site-packages")
    cli._show_warning(FutureWarning("deprecated"), FutureWarning, os.path.join(venv, "peft", "x.py"), 1)
    assert capsys.readouterr().err == ""
    cli._show_warning(UserWarning("tokens overlap"), UserWarning, os.path.join(cli._PACKAGE_DIR, "a.py"), 1)
    cli._show_warning(UserWarning("phantomlens: cache rebuilt"), UserWarning, "elsewhere.py", 1)
    assert capsys.readouterr().err == "warning: tokens overlap\nwarning: cache rebuilt\n"


def test_run_early_stop_says_it_stopped_early_when_and_why(tiny_dir, tmp_path, capsys):
    argv = run_argv(tiny_dir, tmp_path / "r", "--mode", "full", "--steps", "30", "--lr", "0.01")
    code, stdout, _ = run_cli(capsys, *argv, "--early-stop", "--patience", "2")
    assert code == 0
    stored = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert stored["stopped_early"] and stored["steps_completed"] < 30
    line = next(line for line in stdout.splitlines() if line.startswith("stopped"))
    done = stored["steps_completed"]
    assert line == f"stopped   EARLY after {done} of 30 steps ({30 - done} not run): {stored['stop_reason']}"
    assert stored["stop_reason"]  # the rule's reason (probe.py words it)
    code, stdout, _ = run_cli(capsys, *run_argv(tiny_dir, tmp_path / "s", "--steps", "3", "--lr", "0.01"))
    assert code == 0 and "stopped" not in stdout


def test_analyze_never_overwrites_a_stored_analysis_silently(tiny_dir, tmp_path, capsys):
    run = tmp_path / "r"
    assert run_cli(capsys, *run_argv(tiny_dir, run, "--steps", "6", "--lr", "0.01"))[0] == 0
    stored = {name: (run / name).read_bytes() for name in ("summary.json", "events.json")}
    code, stdout, _ = run_cli(capsys, "analyze", run)  # the same analysis: proceeds, and says so
    assert code == 0 and "unchanged the stored events.json and summary.json" in stdout
    assert {name: (run / name).read_bytes() for name in stored} == stored
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, stderr = run_cli(capsys, "analyze", run, "--jump-min-abs", "0.5")
    assert code == 2 and stderr.startswith(f"error: {run}: this analysis would change the stored")
    assert "analysis_thresholds" in stderr and "--overwrite" in stderr and len(stderr.splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written, figure included
    code, stdout, _ = run_cli(capsys, "analyze", run, "--jump-min-abs", "0.5", "--overwrite")
    assert code == 0 and "the stored analysis replaced" in stdout
    assert json.loads((run / "events.json").read_text())["thresholds"]["jump_min_abs"] == 0.5
    (run / "events.json").unlink()  # a run stored without an analysis: adding one replaces nothing
    code, stdout, _ = run_cli(capsys, "analyze", run, "--jump-min-abs", "0.5")
    assert code == 0 and f"written   events.json and trajectory.png in {run}" in stdout
    assert (run / "events.json").is_file()


def test_analyze_of_a_fact_set_run_is_guarded_too(tmp_path, capsys):
    from phantomlens.facts import Fact
    from phantomlens.settings import RunConfig
    from phantomlens.train import finetune

    model, tokenizer = make_tiny("gpt2")
    facts = tmp_path / "facts.jsonl"
    fact = Fact("The river flows into the", "sea and the", "ocean", "multi")
    facts.write_text(json.dumps(fact.to_dict()) + "\n")
    finetune(RunConfig(facts=str(facts), lr=1e-2, steps=3), model=model, tokenizer=tokenizer,
             out=tmp_path / "run", progress=False)  # fmt: skip
    run = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "analyze", run)
    assert code == 0 and "unchanged" in stdout and "already hold this analysis; nothing written" in stdout
    assert "\nwritten" not in stdout  # nothing was: one line says what happened, not two that disagree
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    code, _, stderr = run_cli(capsys, "analyze", run, "--phantom-fraction", "0.5")
    assert code == 2 and "would change the stored" in stderr
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    code, stdout, _ = run_cli(capsys, "analyze", run, "--phantom-fraction", "0.5", "--overwrite")
    assert code == 0 and "unchanged" not in stdout
    written = [line for line in stdout.splitlines() if line.startswith("written")]
    assert len(written) == 1 and written[0].startswith(
        f"written   events.json, summary.json and overview.png in {run} (the stored analysis replaced: "
    )
    assert json.loads((run / "summary.json").read_text())["analysis_thresholds"]["phantom_fraction"] == 0.5


def test_negative_numbers_with_an_exponent_are_values_not_flags(capsys):
    from phantomlens.cli import build_parser

    parser = build_parser()
    for text, value in [("-1e9", -1e9), ("-1", -1.0), ("-.5", -0.5), ("-2.5E-3", -2.5e-3)]:
        assert parser.parse_args(["predict", "--margin-safe", text]).margin_safe == value
    assert parser.parse_args(["sweep", "--out", "s", "--grid", "1e-3", "-1e-2"]).grid == [1e-3, -1e-2]
    code, _, stderr = run_cli(capsys, "predict", "--margin-safe", "-inf")  # refused for what it is
    assert code == 2 and stderr == "error: margin_safe must be a finite number, got -inf\n"


@pytest.mark.parametrize(
    "command", [[], ["run"], ["analyze"], ["report"], ["sweep"], ["predict"], ["calibrate"], ["classify"],
                ["contexts"], ["explain"]],
)  # fmt: skip
def test_every_help_text_renders(command, capsys):
    from phantomlens.cli import main

    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0 and "usage: phantomlens" in capsys.readouterr().out
