"""Bad input from a hostile user: every failure is one ``error:`` line, exit 2, nothing half-written.

Each case is run through ``phantomlens.cli.main`` in-process; dependencies' and the OS's exceptions
must reach the user translated, and outputs must be checked before any training starts.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from phantomlens.cli import main

TEXT = "She felt a deep sense of"
PAIR = ["--context", TEXT, "--target", " shame", "--competitor", " guilt"]


def one_error_line(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


@pytest.fixture
def readonly_dir(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    path = tmp_path / "readonly"
    path.mkdir()
    path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield path
    path.chmod(stat.S_IRWXU)


def _model_files(tmp_path: Path, tiny_dir: Path) -> dict[str, Path]:
    """Damaged models of every kind a user may point --model at."""
    fake_gguf = tmp_path / "text.gguf"
    fake_gguf.write_text("this is not a model\n")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_dir / "config.json").read_text())
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for item in tiny_dir.iterdir():
        (truncated / item.name).write_bytes(item.read_bytes())
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    bad_config = tmp_path / "bad-config"
    bad_config.mkdir()
    for item in tiny_dir.iterdir():
        (bad_config / item.name).write_bytes(item.read_bytes())
    (bad_config / "config.json").write_text("{ not json")
    return {"gguf": fake_gguf, "no-weights": no_weights, "truncated": truncated, "config": bad_config}


@pytest.mark.parametrize("kind", ["gguf", "no-weights", "truncated", "config"])
def test_damaged_models_are_one_line(tiny_dir, tmp_path, capsys, kind):
    model = _model_files(tmp_path, tiny_dir)[kind]
    line = one_error_line(capsys, "run", "--model", model, *PAIR, "--steps", "1", "--out", tmp_path / "r")
    assert str(model) in line
    assert not (tmp_path / "r").exists()


def test_a_missing_relative_path_is_said_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mymodels").mkdir()
    line = one_error_line(capsys, "run", "--model", "mymodels/nope", "--out", "r")
    assert "no such path" in line
    line = one_error_line(capsys, "run", "--model", "./nope", "--out", "r")
    assert "no such path" in line


@pytest.fixture
def no_training(monkeypatch):
    """Loading a model fails the test: outputs must be refused before any model work."""
    import phantomlens.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded although the output was unusable")

    monkeypatch.setattr(phantomlens.models, "load_model", refuse)


def test_unusable_run_outputs_are_refused_before_training(tmp_path, capsys, no_training):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "summary.json").write_text("{}")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, expected in [
        (existing, "already exists and is not empty"),
        (a_file, "is a file"),
        (a_file / "under", "which is a file"),
    ]:
        assert expected in one_error_line(capsys, "run", "--out", out)
    assert (existing / "summary.json").read_text() == "{}"


def test_a_read_only_output_is_refused_before_training(readonly_dir, capsys, no_training):
    assert "permission denied" in one_error_line(capsys, "run", "--out", readonly_dir / "run")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["run", "--lora-alpha", "nan"], "lora_alpha must be a positive finite number"),
        (["run", "--weight-decay", "nan"], "weight_decay must be"),
        (["run", "--diverge-loss", "-5"], "diverge_loss must be a positive"),
        (["run", "--diverge-loss", "nan"], "diverge_loss must be a positive"),
        (["run", "--steps", "1000000000"], "steps must be at least 1 and at most 100,000"),
        (["run", "--steps", "3.5"], "an integer is needed"),
        (["analyze", ".", "--phantom-fraction", "nan"], "phantom_fraction must be"),
        (["sweep", "--out", "s", "--min-lr", "1", "--max-lr", "1e-3"], "must be below max_lr"),
        (["sweep", "--out", "s", "--workers", "-1"], "workers must be at least 1"),
        (["sweep", "--out", "s", "--grid", "1e-3", "inf"], "grid must be a positive finite"),
        (["predict", "--kappa", "nan"], "kappa must be a positive number"),
        (["predict", "--kappa", "1e-300"], "kappa must be a positive number from 0.001 to 1000"),
        (["predict", "--kappa", "1e9"], "kappa must be a positive number from 0.001 to 1000"),
    ],
)
def test_invalid_numbers_are_refused(tmp_path, capsys, monkeypatch, no_training, argv, expected):
    monkeypatch.chdir(tmp_path)
    assert expected in one_error_line(capsys, *argv)
    assert not list(tmp_path.iterdir())


def test_sweep_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    assert "is a file" in one_error_line(capsys, "sweep", "--out", out, "--contexts", "shame")


@pytest.mark.parametrize("target", ["dir", "under-file"])
def test_unwritable_report_and_calibration_outputs(tmp_path, capsys, target):
    out = tmp_path / "d" if target == "dir" else tmp_path / "f" / "x.html"
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    assert one_error_line(capsys, "report", tmp_path / "nothing", "--out", out)
    assert one_error_line(capsys, "calibrate", tmp_path / "nothing", "--out", out)


def test_a_killed_writers_staging_folder_is_cleaned_by_the_next_write(tmp_path):
    from phantomlens.atomic import staged_directory

    dead = tmp_path / ".run.partial-999999999-abc"  # no such PID
    dead.mkdir()
    (dead / "summary.json").write_text("{}")
    live = tmp_path / f".run.partial-{os.getpid()}-def"
    live.mkdir()
    with staged_directory(tmp_path / "run") as staging:
        (staging / "summary.json").write_text(json.dumps({"ok": True}))
    assert not dead.exists() and live.exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"ok": True}


def test_library_errors_name_the_argument_not_the_flag():
    from phantomlens.errors import PhantomLensError
    from phantomlens.settings import RunConfig

    with pytest.raises(PhantomLensError, match=r"^steps must be an integer, got '3'$"):
        RunConfig(steps="3")


RUN = Path(__file__).resolve().parents[1] / "results" / "phantoms" / "smollm2-lora-automobile-0.001"


@pytest.fixture
def stored_run(tmp_path):
    import shutil

    shutil.copytree(RUN, tmp_path / "run", ignore=shutil.ignore_patterns("*.png"))
    return tmp_path / "run"


def _rewrite(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"n_jumps": "<script>alert(1)</script>"}, "n_jumps must be an integer"),
        ({"outcome": "<img src=x onerror=alert(1)>"}, "outcome must be one of"),
        ({"jumps": [{"step": "<script>"}]}, "events.json"),
    ],
)
def test_crafted_events_never_reach_the_page(stored_run, tmp_path, capsys, changes, expected):
    _rewrite(stored_run / "events.json", **changes)
    line = one_error_line(capsys, "report", stored_run, "--out", tmp_path / "r.html")
    assert expected in line and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"flipped_at_end": "yes"}, "flipped_at_end must be true or false"),
        ({"context": "She felt"}, "context"),
        ({"config": {"mode": "qlora"}}, "config is not a valid run configuration"),
    ],
)
def test_wrongly_typed_summaries_are_refused_and_nothing_is_rewritten(stored_run, capsys, changes, expected):
    _rewrite(stored_run / "summary.json", **changes)
    before = {p.name: p.read_bytes() for p in stored_run.iterdir()}
    assert expected in one_error_line(capsys, "analyze", stored_run)
    assert {p.name: p.read_bytes() for p in stored_run.iterdir()} == before


def test_a_summary_that_is_a_list_and_a_parquet_without_columns(stored_run, capsys):
    import pandas as pd

    (stored_run / "summary.json").write_text("[1, 2]")
    assert "summary.json" in one_error_line(capsys, "analyze", stored_run)
    (stored_run / "summary.json").write_text((RUN / "summary.json").read_text())
    pd.DataFrame({"step": [0, 1]}).to_parquet(stored_run / "trajectory.parquet")
    line = one_error_line(capsys, "analyze", stored_run)
    assert "trajectory.parquet" in line and "margin" in line
    assert line.endswith("columns lr, margin, loss, phi and 15 more")  # not all 19 of them


def test_a_sweep_without_its_settings_file_still_refuses_other_settings(tmp_path, capsys):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(
        Path(__file__).resolve().parents[1] / "benchmarks/results/sweeps/smollm2-135m-lora", sweep
    )
    (sweep / "sweep.json").unlink()
    line = one_error_line(
        capsys, "sweep", "--out", sweep, "--mode", "lora", "--steps", "6", "--contexts", "shame"
    )
    assert "steps: 50 -> 6" in line
    (sweep / "sweep.json").write_text("{ corrupt")
    line = one_error_line(
        capsys, "sweep", "--out", sweep, "--mode", "lora", "--steps", "6", "--contexts", "shame"
    )
    assert "steps: 50 -> 6" in line


def test_json_is_written_strict_and_read_back_as_nan(tmp_path):
    import math

    from phantomlens.atomic import write_json_atomic
    from phantomlens.results import RunEvents

    write_json_atomic(tmp_path / "x.json", {"a": math.nan, "b": [math.inf, 1.5], "c": {"d": -math.inf}})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5], "c": {"d": None}}
    events = RunEvents.from_dict(
        json.loads((RUN.parent / "smollm2-lora-shame-0.001" / "events.json").read_text())
    )
    assert math.isnan(events.jumps[0].overlap_change_ratio)  # null on disk: not defined under LoRA


def test_no_stored_result_holds_non_standard_json():
    root = Path(__file__).resolve().parents[1]
    offenders = [
        str(path)
        for pattern in ("results/**/*.json", "benchmarks/results/**/*.json")
        for path in root.glob(pattern)
        if any(token in path.read_text() for token in ("NaN", "Infinity"))
    ]
    assert not offenders, offenders


def test_abbreviated_and_unknown_flags_are_refused_naming_the_command(tmp_path, capsys, no_training):
    line = one_error_line(capsys, "sweep", "--context", "shame", "--out", tmp_path / "s")
    assert "unrecognized arguments: --context shame" in line and "phantomlens sweep --help" in line
    line = one_error_line(capsys, "predict", "--lr", "1e-3")
    assert "--lr" in line and "phantomlens predict --help" in line


def test_analyze_json_of_several_runs_is_one_json_document(stored_run, tmp_path, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(stored_run, other)
    assert main(["analyze", str(stored_run), str(other), "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert isinstance(parsed, list) and len(parsed) == 2 and parsed[0]["n_jumps"] == parsed[1]["n_jumps"]


def test_a_closed_pipe_ends_quietly(stored_run):
    import subprocess
    import sys

    command = f"{sys.executable} -m phantomlens.cli analyze {stored_run} --json | head -c 10"
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_a_missing_hub_like_path_is_said_at_once_when_no_hub_is_reachable(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_error_line(capsys, "run", "--model", "mymodels/nope", "--out", "r")
    assert "no such local path" in line and not (tmp_path / "r").exists()


def test_analyze_validates_every_directory_before_rewriting_any(stored_run, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(stored_run, bad)
    (bad / "summary.json").write_text("[1]")
    before = {p.name: p.read_bytes() for p in stored_run.iterdir()}
    one_error_line(capsys, "analyze", stored_run, bad, "--jump-min-abs", "0.5")
    assert {p.name: p.read_bytes() for p in stored_run.iterdir()} == before


@pytest.mark.parametrize("value", [-1.0, float("inf")])
def test_calibrate_refuses_impossible_learning_rates(tmp_path, capsys, value):
    import shutil

    import pandas as pd

    sweep = tmp_path / "sweep"
    shutil.copytree(
        Path(__file__).resolve().parents[1] / "benchmarks/results/sweeps/smollm2-135m-lora", sweep
    )
    table = pd.read_parquet(sweep / "critical_lr.parquet")
    table["eta_c"] = value
    table.to_parquet(sweep / "critical_lr.parquet")
    assert "positive finite" in one_error_line(capsys, "calibrate", sweep, "--out", tmp_path / "c.json")
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("pairs", ["0", "-5", "10000000000000"])
def test_classify_pairs_are_bounded(tiny_dir, capsys, pairs):
    assert "pairs must be an integer" in one_error_line(
        capsys, "classify", "--model", tiny_dir, "--pairs", pairs
    )


def test_more_bad_arguments(tmp_path, capsys, no_training):
    assert "seed must be" in one_error_line(capsys, "run", "--seed", "99999999999999999999999")
    assert "--out: is empty" in one_error_line(capsys, "run", "--out", "")


def test_a_path_given_as_the_model_object_says_where_paths_go():
    from phantomlens.errors import PhantomLensError
    from phantomlens.train import finetune

    with pytest.raises(PhantomLensError, match=r"RunConfig\(model=\.\.\.\)"):
        finetune(model="/some/where", context="shame", steps=1)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_unwritable_outputs_even_for_root(tmp_path, capsys, no_training):
    """/proc/self refuses new files even to root, the user CI runs as (chmod does not bind root)."""
    unwritable = Path("/proc/self/phantomlens-out")
    assert "permission denied" in one_error_line(capsys, "run", "--out", unwritable)
    assert "permission denied" in one_error_line(capsys, "report", RUN, "--out", unwritable / "r.html")


@pytest.mark.parametrize("kappa", ['"abc"', "NaN", "-1", "true", "9" * 400])
def test_a_calibration_with_a_bad_kappa_is_refused_before_loading(tmp_path, capsys, no_training, kappa):
    path = tmp_path / "calibration.json"
    path.write_text('{"kappa": {"full/adamw/first-order": {"value": ' + kappa + "}}}")
    line = one_error_line(capsys, "predict", "--calibration", path)
    assert "must be a number from 0.001 to 1000" in line and str(path) in line


def test_a_calibration_nested_thousands_deep_is_one_line_naming_it(tmp_path, capsys, no_training):
    path = tmp_path / "calibration.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    line = one_error_line(capsys, "predict", "--calibration", path)
    assert "nested too deeply" in line and str(path) in line


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def refuses_new_files(monkeypatch):
    """Make chosen folders refuse new files, as a read-only mount does even for root (whom chmod
    does not stop): every phantomlens write starts with a temporary file in the target folder."""
    import errno
    import tempfile

    refusing: set[Path] = set()

    def guarded(make):
        def make_unless_refused(*args, **kwargs):
            folder = kwargs.get("dir")
            if folder is not None and Path(folder).resolve() in refusing:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
            return make(*args, **kwargs)

        return make_unless_refused

    monkeypatch.setattr(tempfile, "mkstemp", guarded(tempfile.mkstemp))
    monkeypatch.setattr(tempfile, "TemporaryFile", guarded(tempfile.TemporaryFile))
    return lambda folder: refusing.add(Path(folder).resolve())


def test_an_unchanged_analysis_of_a_read_only_run_writes_nothing(stored_run, capsys, refuses_new_files):
    assert main(["analyze", str(stored_run)]) == 0  # draws the figure the copy was made without
    capsys.readouterr()
    refuses_new_files(stored_run)
    before = _files(stored_run)
    assert main(["analyze", str(stored_run)]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and "jumps" in printed.out
    assert "already hold this analysis; nothing written" in printed.out
    assert main(["analyze", str(stored_run), "--json"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and "n_jumps" in json.loads(printed.out)
    assert _files(stored_run) == before


def test_a_read_only_run_that_needs_writing_is_refused_before_any_run_is_written(
    stored_run, tmp_path, capsys, refuses_new_files
):
    import shutil

    writable = tmp_path / "writable"
    shutil.copytree(stored_run, writable)
    for run in (writable, stored_run):
        (run / "events.json").unlink()  # a run stored without its analysis: analyze must write one
    refuses_new_files(stored_run)
    before = {run: _files(run) for run in (writable, stored_run)}
    line = one_error_line(capsys, "analyze", writable, stored_run)
    assert line.startswith(f"error: {stored_run}: cannot write trajectory.png, events.json there")
    assert "read-only file system" in line and ".tmp" not in line
    assert {run: _files(run) for run in (writable, stored_run)} == before


def test_a_run_made_read_only_by_chmod_is_analysed_without_writing(stored_run, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (refuses_new_files covers root)")
    assert main(["analyze", str(stored_run)]) == 0
    capsys.readouterr()
    stored_run.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert main(["analyze", str(stored_run)]) == 0
        assert "nothing written" in capsys.readouterr().out
    finally:
        stored_run.chmod(stat.S_IRWXU)


def test_a_file_given_as_a_run_directory_names_its_folder(stored_run, capsys):
    from phantomlens.errors import PhantomLensError
    from phantomlens.factrun import FactSetResult

    summary = stored_run / "summary.json"
    line = one_error_line(capsys, "analyze", summary)
    assert line == f"error: {summary} is a file, not a run directory (give its folder {stored_run})"
    with pytest.raises(PhantomLensError, match="is a file, not a run directory"):
        FactSetResult.load(summary)


def test_a_directory_where_a_file_belongs_is_said_plainly(stored_run, tmp_path, capsys, no_training):
    line = one_error_line(capsys, "predict", "--calibration", tmp_path)
    assert line == f"error: calibration file {tmp_path} is a directory; give the file itself"
    trajectory = stored_run / "trajectory.parquet"
    trajectory.unlink()
    trajectory.mkdir()
    line = one_error_line(capsys, "analyze", stored_run)
    assert line == f"error: {trajectory} is a directory, not a parquet file"


def test_a_fact_set_trajectory_that_is_a_directory_or_lacks_columns(tmp_path, capsys):
    import pandas as pd
    from tiny_models import make_tiny

    from phantomlens.errors import PhantomLensError
    from phantomlens.factresults import check_fact_trajectory
    from phantomlens.facts import Fact
    from phantomlens.settings import RunConfig
    from phantomlens.train import finetune

    model, tokenizer = make_tiny("gpt2")
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps(Fact("The river flows into the", "sea and the", "ocean", "multi").to_dict()))
    run = tmp_path / "run"
    finetune(RunConfig(facts=str(facts), lr=1e-2, steps=2), model=model, tokenizer=tokenizer, out=run,
             progress=False)  # fmt: skip
    (run / "trajectory.parquet").unlink()
    (run / "trajectory.parquet").mkdir()
    line = one_error_line(capsys, "analyze", run)
    assert line == f"error: {run / 'trajectory.parquet'} is a directory, not a parquet file"
    with pytest.raises(PhantomLensError, match=r"columns lr, margin, loss, phi and \d+ more$"):
        check_fact_trajectory(pd.DataFrame({"step": [0]}), run / "t.parquet", ["multi"])


def test_kappa_and_a_calibration_together_are_refused_before_loading(tmp_path, capsys, no_training):
    line = one_error_line(capsys, "predict", "--kappa", "2", "--calibration", tmp_path / "missing.json")
    assert "not both" in line
