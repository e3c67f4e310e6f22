"""Property test: whatever bytes or JSON a file holds, every reader keeps the contract.

The contract: exit 0 with a correct answer, or exit 2 with exactly one ``error:`` line on stderr,
and never a traceback. Readers: ``analyze`` and ``report`` (run directories), ``calibrate`` (sweep
directories), ``predict --calibration`` (a calibration file) and sweep resume (run records).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phantomlens.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "results" / "phantoms" / "smollm2-lora-automobile-0.001"
SWEEP = ROOT / "benchmarks" / "results" / "sweeps" / "smollm2-135m-lora"

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
CONTENT = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda value: json.dumps(value).encode()),
)

FUZZ = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def mutated(value, key: str, replacement):
    """A copy of a JSON object with one key's value replaced (a plausible, wrongly-typed file)."""
    return {**value, key: replacement} if isinstance(value, dict) else value


def check_contract(capsys, argv: list[str]) -> None:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (0, 2), err
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in err, err


@contextlib.contextmanager
def fresh_copy(source: Path) -> Iterator[Path]:
    """A new copy of ``source`` for each generated example (pytest's tmp_path is shared by them)."""
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / source.name
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.png"))
        yield target


@FUZZ
@given(name=st.sampled_from(["summary.json", "events.json", "trajectory.parquet"]), content=CONTENT)
def test_analyze_and_report_on_any_file_content(capsys, name, content):
    with fresh_copy(RUN) as run_copy:
        (run_copy / name).write_bytes(content)
        check_contract(capsys, ["report", run_copy, "--out", run_copy.parent / "r.html"])
        check_contract(capsys, ["analyze", run_copy])


@FUZZ
@given(
    key=st.sampled_from(["flipped_at_end", "n_jumps", "status", "context", "margin_final", "config"]),
    value=JSON,
)
def test_wrongly_typed_summary_fields(capsys, key, value):
    with fresh_copy(RUN) as run_copy:
        summary = json.loads((run_copy / "summary.json").read_text())
        (run_copy / "summary.json").write_text(json.dumps(mutated(summary, key, value)))
        before = {p.name: p.read_bytes() for p in run_copy.iterdir()}
        code = main(["analyze", str(run_copy)])
        err = capsys.readouterr().err
        assert code in (0, 2), err
        if code == 2:
            assert err.startswith("error:") and len(err.strip().splitlines()) == 1
            after = {p.name: p.read_bytes() for p in run_copy.iterdir()}
            assert after == before, "a refused analysis rewrote files"


@FUZZ
@given(content=CONTENT)
def test_predict_with_any_calibration_file(tmp_path, capsys, content, monkeypatch):
    import phantomlens.models

    monkeypatch.setattr(phantomlens.models, "load_model", _no_model)
    path = tmp_path / "calibration.json"
    path.write_bytes(content)
    code = main(["predict", "--calibration", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert "no model was to be loaded" not in err, "a bad calibration file must fail before loading"


def _no_model(*args, **kwargs):
    raise RuntimeError("no model was to be loaded")


@FUZZ
@given(name=st.sampled_from(["record", "critical_lr.parquet", "summary.json", "sweep.json"]), content=CONTENT)
def test_calibrate_and_sweep_resume_on_damaged_files(capsys, name, content):
    with fresh_copy(SWEEP) as sweep:
        _damage_and_read(capsys, sweep, name, content)


def _damage_and_read(capsys, sweep: Path, name: str, content: bytes) -> None:
    damaged = sorted(sweep.glob("runs/**/lr=*.json"))[0] if name == "record" else sweep / name
    damaged.write_bytes(content)
    check_contract(capsys, ["calibrate", sweep, "--out", sweep.parent / "c.json"])
    if name == "record":  # resuming must refuse the damaged record before any run starts
        code = main(["sweep", "--out", str(sweep), "--mode", "lora", "--contexts", "shame", "--workers", "1"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err


def test_a_directory_where_a_run_file_belongs(capsys):
    """Each file of a run replaced by a folder: one line naming it as a folder, nothing written."""
    for name in ("summary.json", "events.json", "trajectory.parquet", "trajectory.png"):
        with fresh_copy(RUN) as run_copy:
            (run_copy / name).unlink(missing_ok=True)
            (run_copy / name).mkdir()
            (run_copy / name / "inside").write_text("x")
            before = sorted(p.name for p in run_copy.iterdir())
            code = main(["analyze", str(run_copy)])
            err = capsys.readouterr().err
            assert code == 2 and err.startswith(f"error: {run_copy / name} is a directory"), err
            assert len(err.strip().splitlines()) == 1 and sorted(p.name for p in run_copy.iterdir()) == before
