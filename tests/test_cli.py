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
