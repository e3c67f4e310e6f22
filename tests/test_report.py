"""The HTML report and the analyze command, on runs of a tiny model."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import make_tiny, tiny_pair

from phantomlens.cli import main
from phantomlens.report import build_report, write_report
from phantomlens.train import finetune

HOSTILE = 'She felt <script>alert("x")</script> a deep sense of'


@pytest.fixture
def two_runs(tmp_path):
    dirs = []
    for index, (text, mode) in enumerate([(HOSTILE, "lora"), ("She felt a deep sense of", "full")]):
        model, tokenizer = make_tiny("llama")
        target, competitor = tiny_pair(model, tokenizer, text)
        out = tmp_path / f"run{index}"
        finetune(
            model=model,
            tokenizer=tokenizer,
            context=text,
            target=target,
            competitor=competitor,
            mode=mode,
            steps=5,
            lr=0.05,
            out=out,
            progress=False,
        )
        dirs.append(out)
    return dirs


def test_report_is_self_contained_and_escapes_user_text(two_runs, tmp_path):
    page = build_report(two_runs)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from anywhere
    assert page.count("data:image/png;base64,") == 3  # the overlay and one figure per run
    assert "Overlay of 2 runs" in page
    out = write_report(two_runs, tmp_path / "r.html")
    assert out.read_text().startswith("<!doctype html>") and out.stat().st_size > 10_000


def test_report_renders_in_headless_chromium(two_runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    out = write_report(two_runs, tmp_path / "report.html")
    common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [browser, *common, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert "phantomlens report" in dom.stdout
    assert "<script>" not in dom.stdout  # the hostile context stayed text
    assert dom.stdout.count("<img") == 3
    shot = tmp_path / "shot.png"
    subprocess.run(
        [browser, *common, "--window-size=1280,2000", f"--screenshot={shot}", out.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000


def test_analyze_and_report_commands(two_runs, tmp_path, capsys):
    assert main(["analyze", str(two_runs[1]), "--jump-min-abs", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "outcome" in printed and "thresholds" in printed
    events = json.loads((two_runs[1] / "events.json").read_text())
    assert events["thresholds"]["jump_min_abs"] == 0.5
    summary = json.loads((two_runs[1] / "summary.json").read_text())
    assert summary["analysis_thresholds"]["jump_min_abs"] == 0.5
    assert {"outcome", "n_jumps", "n_phantom_jumps"} <= set(summary)
    assert main(["analyze", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", *map(str, two_runs), "--out", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").stat().st_size > 10_000


def test_lora_run_summary_says_embeddings_frozen(two_runs):
    events = json.loads((two_runs[0] / "events.json").read_text())
    frozen = events["frozen_geometry"]
    assert frozen["embeddings_unchanged"] and frozen["geometric_and_cross_exactly_zero"]
