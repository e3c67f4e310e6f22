"""Critical-LR sweeps: the bisection on known answers, resume after a kill, concurrency, Ray.

The root search on the final margin (the default) has its own tests: tests/test_root_search.py."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from phantomlens.results import DIVERGED, FAILURE, SUCCESS
from phantomlens.settings import SweepConfig
from phantomlens.sweep import lr_key, plan


def oracle(eta_c: float | None, eta_max: float | None):
    def outcome(lr: float) -> str:
        if eta_max is not None and lr >= eta_max:
            return DIVERGED
        if eta_c is not None and lr >= eta_c:
            return SUCCESS
        return FAILURE

    return outcome


def drive(outcome, start: float, config: SweepConfig, limit: int = 200):
    records: dict[float, str] = {}
    for _ in range(limit):
        step = plan(records, start, config)
        if step.next_lr is None:
            return step, records
        assert step.next_lr not in records, "a run was proposed twice"
        records[step.next_lr] = outcome(step.next_lr)
    raise AssertionError("the search did not end")


BISECT = SweepConfig(search="bisect")


@pytest.mark.parametrize("start", [1e-7, 3e-6, 1e-4, 0.5])
def test_bisection_brackets_both_limits_to_one_percent(start):
    config = BISECT.replace(tolerance=0.01)
    truth_c, truth_max = 3.3e-6, 2.2e-3
    step, records = drive(oracle(truth_c, truth_max), start, config)
    assert step.bracket_low < truth_c <= step.bracket_high == step.eta_c
    assert step.bracket_high / step.bracket_low <= 1.01
    assert step.eta_max_low < truth_max <= step.eta_max
    assert step.eta_max / step.eta_max_low <= 1.01
    assert len(records) < 40


def test_no_success_below_divergence_is_reported():
    step, _ = drive(oracle(None, 1e-3), 1e-5, BISECT)
    assert step.eta_c is None and step.eta_max is not None
    assert "no LR below the divergence limit" in step.note
    narrow, _ = drive(oracle(1.5e-3, 1e-3), 1e-5, BISECT)  # success region empty
    assert narrow.eta_c is None


def test_eta_max_optional_and_limits_respected():
    step, records = drive(oracle(1e-5, 1e-2), 1e-6, BISECT.replace(eta_max=False))
    assert step.eta_c is not None and step.eta_max is None
    assert all(lr < 1e-2 for lr in records)
    capped, _ = drive(oracle(1e-5, None), 1e-6, BISECT.replace(max_lr=1e-3))
    assert capped.eta_max is None and "no divergence" in capped.note


def test_plan_is_a_pure_function_of_the_records():
    """Resuming = replaying: the same records always give the same next run."""
    config = BISECT
    outcome = oracle(2e-5, 1e-2)
    _, records = drive(outcome, 1e-6, config)
    ordered = list(records.items())
    for cut in range(len(ordered)):
        partial = dict(ordered[:cut])
        assert plan(partial, 1e-6, config).next_lr == ordered[cut][0]


def test_lr_keys_are_stable():
    assert lr_key(1e-4 * 3) == lr_key(0.00030000000000000003)
    assert f"{lr_key(math.sqrt(1e-6 * 4e-6)):.10g}" == "2e-06"


# --- real sweeps on a tiny model ---------------------------------------------------------------

SWEEP_ARGS = [
    "--contexts",
    "shame",
    "tale",
    "--mode",
    "full",
    "--steps",
    "4",
    "--schedule",
    "constant",
    "--max-lr",
    "1.0",
    "--tolerance",
    "0.05",
    "--workers",
    "1",
]


def cli(*argv, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "phantomlens.cli", *map(str, argv)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **kwargs,
    )


#: A sweep's line on stderr for a finished run, and for a finished prediction.
RUN_LINE = re.compile(r"run \d+ +\S+  lr \S+  \w+( \(silent\))?  \(\d+/\d+ contexts done, \d+:\d\d elapsed\)")
PREDICTED_LINE = re.compile(r"predicted \S+: (η̂_c\(κ=1\) = \S+|no η̂_c); its search starts at lr \S+")


def finished(out, tiny_dir) -> pd.DataFrame:
    before = len(record_files(out)) if out.exists() else 0
    proc = cli("sweep", "--model", tiny_dir, *SWEEP_ARGS, "--out", out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = err.decode().splitlines()  # one line per finished run or prediction, as they finish
    assert all(RUN_LINE.fullmatch(line) or PREDICTED_LINE.fullmatch(line) for line in lines), lines
    assert sum(bool(RUN_LINE.fullmatch(line)) for line in lines) == len(record_files(out)) - before
    return pd.read_parquet(out / "critical_lr.parquet")


def record_files(out):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("runs/**/lr=*.json")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from tiny_models import make_tiny

    base = tmp_path_factory.mktemp("ref")
    model, tokenizer = make_tiny("llama")
    model.save_pretrained(base / "tiny")
    tokenizer.save_pretrained(base / "tiny")
    table = finished(base / "sweep", base / "tiny")
    return base / "tiny", table


@pytest.mark.integration  # whole sweeps in worker processes: minutes
def test_sweep_results_table(reference):
    _, table = reference
    assert list(table["context"]) == ["shame", "tale"]
    for column in ("eta_c", "bracket_low", "bracket_high", "eta_max", "runs_used", "search", "runs_eta_c"):
        assert column in table.columns
    assert table["complete"].all()
    # The default search root-finds each run's final margin; the η_max runs come after it.
    assert (table["search"] == "root").all() and (table["runs_eta_c"] < table["runs_used"]).all()
    # The tiny Llama flips on both contexts within 4 constant-LR steps (η_c ≈ 1.1e-4 for shame,
    # ≈ 1.2e-4 for tale) and does not diverge anywhere up to --max-lr 1.0.
    assert table["eta_c"].notna().all(), table[["context", "eta_c", "note"]]
    assert (table["bracket_low"] < table["eta_c"]).all() and (table["eta_c"] == table["bracket_high"]).all()
    assert (table["bracket_high"] / table["bracket_low"] <= 1.05).all()  # --tolerance 0.05
    assert table["eta_c"].between(1e-5, 1e-3).all()
    assert table["eta_max"].isna().all() and table["eta_max_low"].isna().all()
    assert table["note"].str.contains("no divergence").all()
    # The prediction shown is the one the search started from: the stored (default) variant's.
    assert (table["prediction_variant"] == "replay").all()
    assert (table["eta_c_predicted_start_kappa1"] == table["eta_c_predicted_replay_kappa1"]).all()


@pytest.mark.integration  # whole sweeps in worker processes: minutes
def test_killed_sweep_resumes_without_redoing_or_losing_runs(reference, tmp_path):
    tiny, table = reference
    out = tmp_path / "sweep"
    proc = cli("sweep", "--model", tiny, *SWEEP_ARGS, "--out", out)
    deadline = time.time() + 300
    while len(record_files(out)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-sweep
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep ended before it was killed"
    before = record_files(out)
    assert before, "the sweep was killed before any run finished"
    for path in before:
        json.loads(path.read_text())  # every record on disk is complete
    resumed = finished(out, tiny)
    after = record_files(out)
    assert all(after[path] == before[path] for path in before)  # nothing redone, nothing lost
    assert len(after) > len(before), "the resumed sweep ran nothing: the kill was not mid-sweep"
    pd.testing.assert_frame_equal(
        resumed.drop(columns=["steps_run"]), table.drop(columns=["steps_run"]), check_dtype=False
    )


@pytest.mark.integration  # whole sweeps in worker processes: minutes
def test_two_sweeps_on_one_directory_agree(reference, tmp_path):
    tiny, table = reference
    out = tmp_path / "shared"
    procs = [cli("sweep", "--model", tiny, *SWEEP_ARGS, "--out", out) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    final = pd.read_parquet(out / "critical_lr.parquet")
    cols = ["context", "eta_c", "bracket_low", "bracket_high", "eta_max"]
    pd.testing.assert_frame_equal(final[cols], table[cols], check_dtype=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert [r["context"] for r in summary["results"]] == ["shame", "tale"]


@pytest.mark.integration  # whole sweeps in worker processes: minutes
def test_ray_backend_gives_the_same_answer(reference, tmp_path):
    pytest.importorskip("ray")
    tiny, table = reference
    from phantomlens.sweep import sweep

    result = sweep(
        model=str(tiny),
        contexts=["shame"],
        mode="full",
        steps=4,
        schedule="constant",
        max_lr=1.0,
        tolerance=0.05,
        workers=1,
        backend="ray",
        out=tmp_path / "ray",
        progress=False,
    )
    import ray

    ray.shutdown()
    cols = ["eta_c", "bracket_low", "bracket_high", "eta_max"]
    pd.testing.assert_frame_equal(result[cols].iloc[:1], table[cols].iloc[:1], check_dtype=False)


STORED_RECORD = (
    Path(__file__).resolve().parents[1]
    / "benchmarks/results/sweeps/smollm2-135m-lora/runs/smollm2-135m/lora/automobile/lr=0.0001172908818.json"
)


def test_a_sweep_says_each_finished_run_on_stderr_as_it_is_stored(tmp_path, capsys):
    from phantomlens.sweep import Progress, Sweep

    record = json.loads(STORED_RECORD.read_text())  # a silent kinematic LoRA run of "automobile"
    sweep = Sweep(SweepConfig.from_dict({"contexts": ["automobile", "shame"], "mode": "lora"}), tmp_path)
    bar = Progress("sweep", None, None)
    sweep._store("run", "automobile", record["lr"], record, bar)
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert RUN_LINE.fullmatch(line), line
    assert line.startswith("run 1     automobile  lr 0.000117  kinematic (silent)  (0/2 contexts done, ")
    assert sweep.records("automobile")  # stored, then said


def test_a_grid_counts_its_runs_and_progress_false_is_silent(capsys):
    from phantomlens.sweep import Progress

    bar = Progress("grid", None, 4)
    bar.finished("shame  lr 0.01  success")
    quiet = Progress("grid", False, 4)
    quiet.finished("shame  lr 0.1  success")
    quiet.say("predicted shame")
    for progress in (bar, quiet):
        progress.close()
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"run 1/4   shame  lr 0\.01  success  \(\d+:\d\d elapsed\)", line), line


def test_bad_sweep_input_is_one_error_line(tmp_path, capsys):
    from phantomlens.cli import main

    for argv, expected in [
        (["--contexts", "nope"], "unknown built-in context"),
        (["--tolerance", "0"], "tolerance"),
        (["--factor", "1"], "factor"),
        (["--mode", "qlora"], "invalid choice"),
        (["--grid", "1e-3", "-1"], "grid must be a positive finite number"),
    ]:
        code = main(["sweep", "--out", str(tmp_path / "s"), *argv])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error:") and expected in err and len(err.splitlines()) == 1


@pytest.mark.integration  # whole sweeps in worker processes: minutes
def test_a_failing_run_is_one_error_line_that_says_how_to_resume(reference, tmp_path):
    tiny, _ = reference
    proc = cli(
        "sweep",
        "--model",
        tiny,
        "--contexts",
        "shame",
        "--mode",
        "lora",
        "--lora-target-modules",
        "no_such_projection",
        "--steps",
        "2",
        "--workers",
        "1",
        "--out",
        tmp_path / "s",
    )
    _, err = proc.communicate(timeout=300)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("error: the predict of shame failed in its worker")
    assert "LoRA could not be applied" in lines[0] and "rerun the same command" in lines[0]


@pytest.mark.integration  # whole sweeps in worker processes: minutes
def test_grid_runs_every_lr_once_and_resumes(reference, tmp_path):
    """--grid: every (context, LR) cell once, in grid.parquet; a rerun adds nothing."""
    from phantomlens.sweep import Sweep

    tiny, _ = reference
    settings = dict(model=str(tiny), contexts=["shame", "tale"], mode="full", steps=3, workers=1)
    config = SweepConfig.from_dict({**settings, "grid": [1e-4, 1e-2, 1.0]})
    table = Sweep(config, tmp_path / "g").run(progress=False)
    assert sorted(table["lr"].unique()) == [1e-4, 1e-2, 1.0]
    assert len(table) == 6 and set(table["context"]) == {"shame", "tale"}
    # 3 cosine steps: 1e-4 is below η_c on both contexts (≈ 1.1e-4 even at 4 constant steps), 1e-2 and 1.0
    # flip both, and nothing diverges.
    verdicts = table.groupby("lr")["verdict"].agg(lambda v: sorted(set(v))).to_dict()
    assert verdicts == {1e-4: [FAILURE], 1e-2: [SUCCESS], 1.0: [SUCCESS]}
    stored = pd.read_parquet(tmp_path / "g" / "grid.parquet")
    pd.testing.assert_frame_equal(stored, table)
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["complete"] is True
    before = record_files(tmp_path / "g")
    Sweep(config, tmp_path / "g").run(progress=False)
    assert record_files(tmp_path / "g") == before, "a finished grid cell was run again"
    wider = SweepConfig.from_dict(
        {**settings, "grid": [1e-4, 1e-2, 1.0, 0.1]}
    )  # one more LR: one run per context
    assert len(Sweep(wider, tmp_path / "g").run(progress=False)) == 8


@pytest.mark.integration  # whole sweeps in worker processes: minutes
def test_a_directory_refuses_runs_with_other_settings(reference, tmp_path):
    from phantomlens.errors import PhantomLensError
    from phantomlens.sweep import Sweep

    tiny, _ = reference
    settings = dict(model=str(tiny), contexts=["shame"], mode="full", steps=2, workers=1)
    Sweep(SweepConfig.from_dict({**settings, "grid": [1e-3]}), tmp_path / "d").run(progress=False)
    with pytest.raises(PhantomLensError, match="steps: 2 -> 3"):
        Sweep(SweepConfig.from_dict({**settings, "steps": 3, "grid": [1e-3]}), tmp_path / "d").run(
            progress=False
        )
    with pytest.raises(PhantomLensError, match="holds a grid, not a search"):
        Sweep(SweepConfig.from_dict(settings), tmp_path / "d").run(progress=False)


def test_sweep_device_is_checked_up_front(tmp_path):
    import torch

    from phantomlens.errors import PhantomLensError
    from phantomlens.sweep import Sweep

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(PhantomLensError, match="no CUDA device is visible"):
        Sweep(SweepConfig.from_dict({"contexts": ["shame"], "device": "cuda"}), tmp_path / "s")


@pytest.mark.integration  # a sweep in worker processes, stopped with SIGTERM
def test_a_terminated_sweep_stops_at_once_and_resumes(reference, tmp_path):
    tiny, table = reference
    out = tmp_path / "sweep"
    proc = cli("sweep", "--model", tiny, *SWEEP_ARGS, "--out", out)
    deadline = time.time() + 300
    while not record_files(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # the driver only, as `kill PID` does
    _, err = proc.communicate(timeout=60)
    *said, last = err.decode().strip().splitlines()  # the finished runs' lines, then one error
    assert proc.returncode == 130 and last.startswith("error:") and "interrupted" in last, err.decode()
    assert all(RUN_LINE.fullmatch(line) or PREDICTED_LINE.fullmatch(line) for line in said), said
    resumed = finished(out, tiny)
    pd.testing.assert_frame_equal(
        resumed.drop(columns=["steps_run"]), table.drop(columns=["steps_run"]), check_dtype=False
    )


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited; only its reaping is left


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_a_worker_exits_when_its_sweep_is_killed(tmp_path):
    """A sweep killed with SIGKILL cannot stop its workers; each watches for it and exits itself."""
    script = tmp_path / "sweep_like.py"
    script.write_text(
        "import multiprocessing, os, time\n"
        "from phantomlens.sweep import watch_parent\n"
        "def worker(parent):\n"
        "    watch_parent(parent, interval=0.1)\n"
        "    time.sleep(120)\n"
        "if __name__ == '__main__':\n"
        "    child = multiprocessing.get_context('spawn').Process(target=worker, args=(os.getpid(),))\n"
        "    child.start()\n"
        "    print(child.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE)
    worker = int(proc.stdout.readline())
    time.sleep(1.0)  # the worker's guard is running
    assert _alive(worker)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker)


STORED = Path(__file__).resolve().parents[1] / "results" / "unseen" / "smollm2-135m-lora"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"eta_c": -1.0}, "eta_c must be a learning rate"),
        ({"eta_c_replay": float("inf")}, "eta_c_replay must be a learning rate"),
        ({"kappa": -5}, "kappa must be a positive number"),
        ({"replay_points": [[1e-4, float("nan"), True]]}, "each replay point"),
        ({"replay_points": [[1], [2]]}, "each replay point"),
    ],
)
def test_a_stored_prediction_with_impossible_numbers_is_refused(tmp_path, change, expected):
    from phantomlens.errors import PhantomLensError
    from phantomlens.results import load_prediction

    stored = json.loads((STORED / "predictions" / "smollm2-135m" / "lora" / "assist.json").read_text())
    path = tmp_path / "assist.json"
    path.write_text(json.dumps(stored | change))  # NaN and inf written as JSON's extensions
    with pytest.raises(PhantomLensError, match=expected) as caught:
        load_prediction(path)
    assert str(path) in str(caught.value)


def test_a_sweep_refuses_a_prediction_made_for_other_run_settings(tmp_path):
    import shutil

    from phantomlens.errors import PhantomLensError
    from phantomlens.settings import SweepConfig
    from phantomlens.sweep import Sweep

    out = tmp_path / "sweep"
    shutil.copytree(STORED, out)
    path = out / "predictions" / "smollm2-135m" / "lora" / "assist.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"steps": 7, "mode": "full"}))
    sweep = Sweep(SweepConfig.from_dict(json.loads((out / "sweep.json").read_text())), out)
    with pytest.raises(PhantomLensError, match="predicted for other run settings: mode full") as caught:
        sweep.prediction("assist")
    assert "steps 7 (this sweep: 50)" in str(caught.value)
    assert sweep.prediction("pal") is not None  # the others are untouched


def test_a_grid_attempt_that_ran_nothing_does_not_claim_its_directory(tmp_path):
    from phantomlens.errors import PhantomLensError
    from phantomlens.sweep import Sweep

    (tmp_path / "sweep.json").write_text(json.dumps({"grid": [1e-4]}))  # its model was missing, say
    search = Sweep(SweepConfig.from_dict({"contexts": ["shame"]}), tmp_path)
    search._check_kind()  # nothing ran: a search may use the directory
    record = tmp_path / "runs" / "smollm2-135m" / "full" / "shame" / "lr=0.0001.json"
    record.parent.mkdir(parents=True)
    record.write_text("{}")
    with pytest.raises(PhantomLensError, match="holds a grid, not a search"):
        search._check_kind()
