"""The HTML report and the analyze command, on runs of a tiny model."""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import sys
import textwrap

import pytest
from tiny_models import make_tiny, tiny_pair

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
    assert main(["analyze", str(two_runs[1]), "--jump-min-abs", "0.5", "--overwrite"]) == 0
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


def test_figures_are_pyplot_free_figure_objects(two_runs, tmp_path):
    from matplotlib.figure import Figure

    from phantomlens.plot import figure_png, plot_margin, trajectory_figure
    from phantomlens.report import load_runs, overlay_figure
    from phantomlens.rundir import RunResult

    run = RunResult.load(two_runs[0])
    summary, trajectory = run.summary.to_dict(), run.trajectory
    fig = trajectory_figure(trajectory, summary, [{"step_from": 1, "step": 2}])
    assert isinstance(fig, Figure) and len(fig.axes) == 7  # six panels and the purity twin axis
    assert figure_png(fig)[:4] == b"\x89PNG"
    ax = plot_margin(trajectory, flip_step=3)
    assert isinstance(ax.figure, Figure) and ax.get_lines()
    assert figure_png(ax.figure)[:4] == b"\x89PNG"
    assert isinstance(overlay_figure(load_runs(two_runs)), Figure)
    assert (two_runs[0] / "trajectory.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_and_report_leave_the_matplotlib_backend_alone(two_runs, tmp_path):
    # A notebook's backend must survive phantomlens drawing: no matplotlib.use, no pyplot.
    code = textwrap.dedent(
        f"""
        import sys
        import matplotlib
        matplotlib.use("svg")
        from phantomlens.plot import plot_trajectory
        from phantomlens.report import write_report
        from phantomlens.rundir import RunResult
        run = RunResult.load({str(two_runs[0])!r})
        summary, trajectory = run.summary.to_dict(), run.trajectory
        plot_trajectory(trajectory, summary, {str(tmp_path / "t.png")!r})
        write_report({[str(d) for d in two_runs]!r}, {str(tmp_path / "r.html")!r})
        assert matplotlib.get_backend() == "svg", matplotlib.get_backend()
        assert "matplotlib.pyplot" not in sys.modules
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "r.html").is_file()


def test_report_module_leaves_the_backend_alone_in_process(two_runs):
    import matplotlib

    before = matplotlib.get_backend()
    build_report(two_runs)
    assert matplotlib.get_backend() == before


def test_a_single_runs_section_shows_its_notes_and_why_it_stopped_early(tmp_path):
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, "She felt a deep sense of")
    out = tmp_path / "run"
    finetune(model=model, tokenizer=tokenizer, context="She felt a deep sense of", target=target,
             competitor=competitor, mode="full", steps=30, lr=0.01, early_stop=True, patience=2, out=out,
             progress=False)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped_early"] and summary["stop_reason"]
    summary["notes"] = [*summary["notes"], 'a note with <b>markup</b> & "quotes"']
    (out / "summary.json").write_text(json.dumps(summary))
    page = build_report([out])
    done = summary["steps_completed"]
    reason = html.escape(summary["stop_reason"], quote=True)
    assert f"<p class=note>stopped early after {done} of 30 steps: {reason}</p>" in page
    assert "<p class=note>note: a note with &lt;b&gt;markup&lt;/b&gt; &amp; &quot;quotes&quot;</p>" in page
    assert "<b>markup</b>" not in page
