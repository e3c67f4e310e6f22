"""Typed stored results: every file in the repository reads and rewrites exactly as it was."""

from __future__ import annotations

import copy
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from phantomlens.atomic import strict_json
from phantomlens.errors import PhantomLensError
from phantomlens.factresults import FactSetEvents, FactSetSummary
from phantomlens.results import (
    RunEvents,
    RunSummary,
    SweepRunRecord,
    SweepSummary,
    find_run_dirs,
    load_run_dir,
    load_run_events,
    load_run_summary,
    load_sweep_records,
    load_sweep_summary,
    verdict_of,
)

ROOT = Path(__file__).resolve().parents[1]
STORES = [ROOT / "results", ROOT / "benchmarks" / "results"]
RUN_DIR = ROOT / "results" / "phantoms" / "smollm2-lora-shame-0.001"  # a run with jumps
OLD_RUN_DIR = ROOT / "results" / "phantoms" / "gemma3-full-shame-1e-05"  # written before `device`


def stored(pattern: str) -> list[Path]:
    return sorted(p for store in STORES for p in store.rglob(pattern))


def kind_of(path: Path) -> type:
    if path.name in ("summary.json", "events.json") and '"kind": "fact-set"' in path.read_text():
        return FactSetSummary if path.name == "summary.json" else FactSetEvents
    if path.name == "events.json":
        return RunEvents
    if path.name.startswith("lr="):
        return SweepRunRecord
    return SweepSummary if (path.parent / "sweep.json").is_file() else RunSummary


FILES = stored("summary.json") + stored("events.json") + stored("lr=*.json")


def exact(value) -> str:
    """A comparison key that tells 1 from 1.0 and key order apart: the strict JSON written to disk
    (where a NaN, "not defined", is null)."""
    return strict_json(value)


def test_every_kind_of_stored_result_is_present():
    kinds = {kind_of(p) for p in FILES}
    assert kinds == {RunSummary, RunEvents, SweepRunRecord, SweepSummary, FactSetSummary, FactSetEvents}
    assert len(FILES) > 800  # the phantoms, early-stop runs, sweeps and grids of the findings


@pytest.mark.parametrize(
    "kind",
    [RunSummary, RunEvents, SweepRunRecord, SweepSummary, FactSetSummary, FactSetEvents],
    ids=lambda k: k.__name__,
)
def test_every_stored_file_round_trips_exactly(kind):
    paths = [p for p in FILES if kind_of(p) is kind]
    for path in paths:
        data = json.loads(path.read_text())
        result = kind.from_dict(data, where=str(path))
        out = json.loads(strict_json(result.to_dict()))
        assert out == data, path
        assert exact(out) == exact(data) or kind is SweepRunRecord, path
        # records were written with `device` in two places; their order is not canonical
        assert exact(dict(sorted(out.items()))) == exact(dict(sorted(data.items()))), path
        assert result.extra == {}, f"{path}: keys this version does not know: {sorted(result.extra)}"


def test_a_wrong_type_names_the_field():
    data = json.loads((RUN_DIR / "summary.json").read_text())
    with pytest.raises(PhantomLensError, match="flipped_at_end must be true or false, got 'yes'"):
        RunSummary.from_dict({**data, "flipped_at_end": "yes"}, where="summary.json")
    with pytest.raises(PhantomLensError, match=r"context: target_id must be an integer"):
        RunSummary.from_dict({**data, "context": {**data["context"], "target_id": "7"}})
    with pytest.raises(PhantomLensError, match="steps_completed must be an integer, got True"):
        RunSummary.from_dict({**data, "steps_completed": True})  # a bool is not a count
    with pytest.raises(PhantomLensError, match="outcome must be one of success, kinematic"):
        RunSummary.from_dict({**data, "outcome": "fine"})
    with pytest.raises(PhantomLensError, match="notes\\[1\\] must be a string"):
        RunSummary.from_dict({**data, "notes": ["ok", 3]})


def test_a_wrong_type_inside_a_jump_or_record_names_the_field():
    events = json.loads((RUN_DIR / "events.json").read_text())
    broken = copy.deepcopy(events)
    broken["jumps"][0]["phantom"] = "yes"
    with pytest.raises(PhantomLensError, match=r"jumps\[0\]\.phantom must be true or false"):
        RunEvents.from_dict(broken)
    record_path = stored("lr=*.json")[0]
    record = json.loads(record_path.read_text())
    with pytest.raises(PhantomLensError, match="lr must be a number"):
        SweepRunRecord.from_dict({**record, "lr": "1e-5"}, where=str(record_path))


def test_missing_keys_fail_and_name_what_is_missing():
    data = json.loads((RUN_DIR / "summary.json").read_text())
    del data["loss_final"]
    with pytest.raises(PhantomLensError, match="lacks loss_final"):
        RunSummary.from_dict(data)
    events = json.loads((RUN_DIR / "events.json").read_text())
    del events["jumps"][0]["z_score"]
    with pytest.raises(PhantomLensError, match="missing keys: z_score"):
        RunEvents.from_dict(events)


def test_unknown_keys_are_kept_and_written_back():
    data = json.loads((RUN_DIR / "summary.json").read_text())
    newer = {**data, "from_the_future": {"a": [1, 2]}}
    summary = RunSummary.from_dict(newer)
    assert summary.extra == {"from_the_future": {"a": [1, 2]}}
    assert summary.to_dict() == newer
    events = json.loads((RUN_DIR / "events.json").read_text())
    events["jumps"][0]["from_the_future"] = 1
    with pytest.raises(PhantomLensError, match="unknown keys: from_the_future"):
        RunEvents.from_dict(events)  # a Jump has no `extra`: refusing beats dropping data


def test_fields_newer_than_a_file_default_to_none_and_are_not_written():
    data = json.loads((OLD_RUN_DIR / "summary.json").read_text())
    assert "device" not in data and "stop_reason" not in data
    summary = RunSummary.from_dict(data)
    assert summary.device is None and summary.stop_reason is None
    assert "device" not in summary.to_dict()
    assert summary.replace(device="cpu").to_dict()["device"] == "cpu"


def test_contradictory_files_are_refused():
    events = json.loads((RUN_DIR / "events.json").read_text())
    with pytest.raises(PhantomLensError, match="n_jumps is 7 but the jumps give"):
        RunEvents.from_dict({**events, "n_jumps": 7})
    summary = json.loads((RUN_DIR / "summary.json").read_text())
    with pytest.raises(PhantomLensError, match="embeddings_unchanged contradicts"):
        RunSummary.from_dict({**summary, "embeddings_unchanged": not summary["embeddings_unchanged"]})
    record = json.loads(stored("lr=*.json")[0].read_text())
    wrong = {"success": "failure", "diverged": "success"}.get(record["verdict"], "success")
    with pytest.raises(PhantomLensError, match="contradicts outcome"):
        SweepRunRecord.from_dict({**record, "verdict": wrong})


def test_loading_a_run_directory():
    summary, trajectory, events = load_run_dir(RUN_DIR)
    assert isinstance(summary, RunSummary) and isinstance(events, RunEvents)
    assert summary.context.target == " shame" and summary.n_jumps == events.n_jumps == len(events.jumps) > 0
    assert len(trajectory) == summary.steps_completed + 1
    jump = events.jumps[0]
    assert type(jump).__name__ == "Jump" and jump.phantom and math.isnan(jump.overlap_change_ratio)
    assert summary.run_config().peak_lr == pytest.approx(1e-3)
    assert load_run_dir(RUN_DIR, events=False)[2] is None
    with pytest.raises(PhantomLensError, match="does not exist"):
        load_run_summary(ROOT / "no-such-run")
    assert RUN_DIR in find_run_dirs(ROOT / "results" / "phantoms")
    assert not any((d / "sweep.json").exists() for d in find_run_dirs(ROOT / "results"))


def test_a_run_without_events_reads_as_none(tmp_path):
    shutil.copytree(RUN_DIR, tmp_path / "run", ignore=shutil.ignore_patterns("events.json", "*.png"))
    assert load_run_events(tmp_path / "run") is None
    assert load_run_dir(tmp_path / "run")[2] is None


def test_reanalysis_rewrites_a_stored_run_byte_for_byte(tmp_path):
    from phantomlens.rundir import RunResult, reanalyze

    run = tmp_path / "run"
    shutil.copytree(RUN_DIR, run, ignore=shutil.ignore_patterns("*.png"))
    result = reanalyze(run)
    for name in ("summary.json", "events.json"):
        assert (run / name).read_text() == (RUN_DIR / name).read_text(), name
    assert result.summary == RunResult.load(run).summary
    assert result.events.n_jumps == json.loads((RUN_DIR / "events.json").read_text())["n_jumps"]
    assert (run / "trajectory.png").stat().st_size > 1000


def test_sweep_readers_and_the_record_a_run_makes():
    directory = ROOT / "benchmarks" / "results" / "sweeps" / "smollm2-135m-full"
    records = load_sweep_records(directory)
    assert len(records) == len(list(directory.glob("runs/**/lr=*.json"))) > 0
    assert all(r.verdict == verdict_of(r.outcome) for r in records)
    assert {r.optimizer for r in records} == {"adamw"} and records[0].context in load_sweep_summary(
        directory
    ).config["contexts"]
    newest = next(r for r in records if r.device is not None)
    summary, _, events = load_run_dir(RUN_DIR)
    made = SweepRunRecord.from_run(summary.replace(device="cpu"), events, {**newest.run, "lr": 1e-3}, 12.345)
    assert set(made.to_dict()) == set(newest.to_dict())  # the same schema as the stored records
    assert made.verdict == verdict_of(summary.outcome) and made.wall_time_s == 12.35 and made.lr == 1e-3
    assert made.drag_change == events.outcome_detail.drag_change


def test_importing_results_loads_nothing_heavy():
    heavy = ("torch", "pandas", "numpy", "phantomlens.transitions")
    code = "import sys, json, phantomlens.results\n"
    code += f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_every_stored_prediction_round_trips():
    from phantomlens.results import load_prediction

    paths = sorted(ROOT.glob("benchmarks/results/sweeps/*/predictions/**/*.json"))
    assert len(paths) >= 48
    for path in paths:
        stored = json.loads(path.read_text())
        prediction = load_prediction(path)
        assert prediction.to_dict() == stored and prediction.variant in (
            "first-order",
            "simulated",
            "two-point",
            "replay",
        )
