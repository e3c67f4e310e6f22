"""Sweeps over a fact file on a tiny model: η_c per fact (each trained alone), η_c(F, q) of the set
trained jointly, resume, calibration on facts, and one-line errors for bad input.

The runs execute in this process (``InlineBackend``) so that the file stays fast: the process
pool, which only moves the same ``execute`` calls into workers, is covered by tests/test_sweep.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import json

import pandas as pd
import pytest
import torch
from tiny_models import make_tiny

from phantomlens.cli import main
from phantomlens.errors import PhantomLensError
from phantomlens.results import DIVERGED, SUCCESS, load_sweep_record
from phantomlens.settings import DEFAULT_LR, SweepConfig
from phantomlens.sweep import Sweep, subject_key

sweep_module = importlib.import_module("phantomlens.sweep")  # the package exports a function of that name
REAL_BACKEND = sweep_module._Backend  # the module fixture below swaps in an inline one

FACTS = [
    {"prompt": "She felt a deep sense of", "target": "shame", "competitor": "guilt", "name": "single"},
    # several answer tokens: a fact-set run of one fact, with its own prediction
    {
        "prompt": "The river flows into the",
        "target": "sea and the",
        "competitor": "ocean",
        "name": "multi word",
    },
]

#: Short runs, a coarse bracket and no η_max search: each sweep takes a few seconds.
SETTINGS = {
    "mode": "full",
    "steps": 4,
    "schedule": "constant",
    "spectral_topk": 0,
    "max_lr": 1.0,
    "tolerance": 0.2,
    "eta_max": False,
    "workers": 1,
}
FLAGS = ["--steps", "4", "--schedule", "constant", "--spectral-topk", "0", "--max-lr", "1.0",
         "--tolerance", "0.2", "--no-eta-max", "--workers", "1"]  # fmt: skip


class InlineBackend:
    """The sweep's backend, running each task at once in this process (the model stays cached)."""

    runs = 0
    stop_after: int | None = None  # raise KeyboardInterrupt at this run, as a kill would stop it

    def __init__(self, config: SweepConfig) -> None:
        pass

    def submit(self, task: dict) -> cf.Future:
        if task["kind"] == "run":
            InlineBackend.runs += 1
            if InlineBackend.stop_after is not None and InlineBackend.runs > InlineBackend.stop_after:
                raise KeyboardInterrupt
        future: cf.Future = cf.Future()
        try:
            future.set_result(sweep_module.execute(task))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def close(self, abort: bool = False) -> None:
        pass


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A tiny Llama directory, the fact file, and the inline backend for the whole module."""
    base = tmp_path_factory.mktemp("facts")
    model, tokenizer = make_tiny("llama")
    model.save_pretrained(base / "tiny")
    tokenizer.save_pretrained(base / "tiny")
    facts = write_facts(base / "facts.jsonl", FACTS)
    threads = torch.get_num_threads()
    # One thread, as each worker of a sweep gets its share: on a busy machine a 32-wide model run
    # on every core waits on the others (a 20× slowdown was seen).
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sweep_module, "_Backend", InlineBackend)
            yield base, base / "tiny", facts
    finally:
        torch.set_num_threads(threads)


def write_facts(path, facts):
    path.write_text("".join(json.dumps(f) + "\n" for f in facts))
    return path


def run_sweep(out, tiny, **settings) -> pd.DataFrame:
    config = SweepConfig().replace(model=str(tiny), **{**SETTINGS, **settings})
    return Sweep(config, out).run(progress=False)


@pytest.fixture(scope="module")
def per_fact(env):
    base, tiny, facts = env
    return base / "per-fact", run_sweep(base / "per-fact", tiny, fact_file=str(facts))


def test_per_fact_sweep_measures_each_fact_alone(env, per_fact):
    out, table = per_fact
    assert list(table["context"]) == ["single", "multi word"]
    assert table["complete"].all() and table["eta_c"].notna().all(), table[["context", "note"]]
    assert (table["bracket_low"] < table["eta_c"]).all()
    assert (table["bracket_high"] / table["bracket_low"] <= 1.2).all()
    assert table["eta_c_predicted_kappa1"].notna().all()  # both facts have a prediction to start from
    runs = out / "runs" / "tiny" / "full"
    assert sorted(p.name for p in runs.iterdir()) == sorted(["single", subject_key("multi word")])
    assert subject_key("multi word").startswith("multi_word-")
    for row in table.itertuples():
        key = subject_key(row.context)
        at_eta = load_sweep_record(runs / key / f"lr={row.eta_c:.10g}.json")
        below = load_sweep_record(runs / key / f"lr={row.bracket_low:.10g}.json")
        assert at_eta.verdict == SUCCESS and below.verdict != SUCCESS
        assert at_eta.run["context"] == FACTS[0 if row.context == "single" else 1]["prompt"]
    multi = load_sweep_record(next((runs / subject_key("multi word")).glob("lr=*.json")))
    assert multi.n_facts == 1 and multi.fraction_flipped in (0.0, 1.0) and multi.facts_sha256
    assert multi.quantile is None and multi.run["target"] == "sea and the"


def test_killed_per_fact_sweep_resumes_to_the_same_table(env, per_fact, tmp_path):
    _, tiny, facts = env
    out = tmp_path / "sweep"
    InlineBackend.runs, InlineBackend.stop_after = 0, 4
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(out, tiny, fact_file=str(facts))
    finally:
        InlineBackend.stop_after = None
    before = {p: p.read_bytes() for p in out.glob("runs/**/lr=*.json")}
    assert 0 < len(before) <= 4
    resumed = run_sweep(out, tiny, fact_file=str(facts))
    after = {p: p.read_bytes() for p in out.glob("runs/**/lr=*.json")}
    assert all(after[p] == before[p] for p in before) and len(after) > len(before)  # nothing redone
    pd.testing.assert_frame_equal(resumed, per_fact[1], check_dtype=False)


def test_joint_sweep_gives_eta_c_of_the_set_monotone_in_q(env, capsys):
    base, tiny, facts = env
    tables = {}
    for q in ("0.5", "1"):
        out = base / f"joint-{q}"
        argv = ["sweep", "--model", tiny, "--facts", facts, "--joint", "--quantile", q, *FLAGS]
        assert main([*map(str, argv), "--start-lr", "1e-3", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert printed.startswith("fact set") and "flipped   " in printed
        tables[q] = pd.read_parquet(out / "critical_lr.parquet")
        records = [load_sweep_record(p) for p in out.glob("runs/**/lr=*.json")]
        assert records and all(r.quantile == float(q) and r.n_facts == 2 for r in records)
        for r in records:  # the verdict is the fraction flipped held against q
            flipped = r.status == "completed" and r.fraction_flipped >= float(q)
            assert r.verdict == (DIVERGED if r.status == "diverged" else SUCCESS if flipped else "failure")
    half, full = tables["0.5"].iloc[0], tables["1"].iloc[0]
    assert (half["context"], full["context"]) == ("joint(q=0.5)", "joint(q=1)")
    assert half["eta_c"] is not None and full["eta_c"] is not None, (half["note"], full["note"])
    assert half["eta_c"] <= full["eta_c"]
    assert pd.isna(full["eta_c_predicted_kappa1"])  # no prediction of a set: the search starts at --start-lr


def test_resume_with_another_fact_file_or_q_is_refused(env, per_fact, tmp_path):
    base, tiny, facts = env
    other = write_facts(tmp_path / "other.jsonl", [{**FACTS[0], "target": "guilt", "competitor": "shame"}])
    cases = [
        ({"fact_file": str(other)}, "facts of another fact file"),
        ({"fact_file": str(facts), "joint": True}, "trained one at a time, not of the facts trained jointly"),
        ({"contexts": ["shame"]}, "not of built-in contexts"),
    ]
    for settings, expected in cases:
        with pytest.raises(PhantomLensError, match=expected):
            run_sweep(per_fact[0], tiny, **settings)
    with pytest.raises(
        PhantomLensError, match=r"jointly at q = 0\.5, not of the facts trained jointly at q = 1"
    ):
        run_sweep(base / "joint-0.5", tiny, fact_file=str(facts), joint=True, start_lr=1e-3)
    moved = write_facts(tmp_path / "same.jsonl", FACTS)  # the same facts elsewhere: resumes, runs nothing
    pd.testing.assert_frame_equal(run_sweep(per_fact[0], tiny, fact_file=str(moved)), per_fact[1])


def test_a_fact_without_prediction_starts_at_the_default_lr(env, tmp_path, monkeypatch):
    _, tiny, _ = env
    facts = write_facts(tmp_path / "f.csv", [])
    facts.write_text("prompt,target,name\nShe felt a deep sense of,shame,picked\n")  # no competitor

    def unavailable(*args, **kwargs):
        raise PhantomLensError("no prediction of this fact yet")

    monkeypatch.setattr("phantomlens.predict.predict_critical_lr", unavailable)
    with pytest.warns(UserWarning, match="no prediction for 'picked'"):
        table = run_sweep(tmp_path / "s", tiny, fact_file=str(facts), tolerance=0.5)
    row = table.iloc[0]
    assert row["note"] == "no prediction" and pd.isna(row["eta_c_predicted_kappa1"])
    assert row["eta_c"] is not None and row["complete"]
    first = min(load_sweep_record(p).lr for p in (tmp_path / "s").glob("runs/**/lr=*.json"))
    assert first <= DEFAULT_LR["full"]  # the search began at the mode's default, then went up
    record = load_sweep_record(next((tmp_path / "s").glob("runs/**/lr=*.json")))
    assert record.run["competitor"] is None  # left to the rule, which picks one per run


def test_calibrate_on_the_facts_of_a_file(env, per_fact, tmp_path, capsys):
    _, _, facts = env
    contexts = tmp_path / "contexts"
    contexts.mkdir()
    table = per_fact[1].assign(
        context=["shame", "tale"]
    )  # a sweep of built-in contexts, as calibration sees it
    table.to_parquet(contexts / "critical_lr.parquet")
    both = str(tmp_path / "both.json")
    assert main(["calibrate", str(per_fact[0]), str(contexts), "--out", both, "--json"]) == 0
    assert {c["context"] for c in json.loads(capsys.readouterr().out)["contexts"]} == {
        "single", "multi word", "shame", "tale"
    }  # fmt: skip
    only = str(tmp_path / "only.json")
    assert main(["calibrate", "--facts", str(facts), str(per_fact[0]), str(contexts), "--out", only]) == 0
    capsys.readouterr()
    with open(only) as file:
        result = json.load(file)
    assert {c["context"] for c in result["contexts"]} == {"single", "multi word"}
    assert result["facts"] == str(facts)
    other = write_facts(tmp_path / "other.jsonl", [{**FACTS[0], "name": "elsewhere"}])
    code = main(["calibrate", "--facts", str(other), str(per_fact[0]), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and f"no row of these sweeps is a fact of {other}" in err


def test_bad_fact_sweep_input_is_one_error_line(tmp_path, capsys):
    good = write_facts(tmp_path / "good.jsonl", FACTS)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    named = write_facts(tmp_path / "named.jsonl", [{"prompt": "shame", "target": "guilt", "competitor": "x"}])
    cases = [
        (["--facts", tmp_path / "missing.jsonl"], "does not exist"),
        (["--facts", tmp_path / "bad.jsonl"], "line 1: missing target"),
        (["--joint"], "--joint needs --facts"),
        (["--facts", good, "--contexts", "shame"], "not both"),
        (["--facts", good, "--joint", "--quantile", "0"], "quantile must be a number in (0, 1]"),
        (["--facts", good, "--joint", "--quantile", "1.5"], "quantile must be a number in (0, 1]"),
        (["--facts", good, "--quantile", "0.5"], "--quantile goes with --joint"),
        (["--facts", named], "the prompt of fact 'shame' is the name of a built-in context"),
    ]
    for argv, expected in cases:
        # a model that does not exist: the error must come first, before any model would load
        code = main(
            ["sweep", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "s"), *map(str, argv)]
        )
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error:") and expected in err, (argv, err)
        assert len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_a_sweep_uses_the_cores_omp_num_threads_allows(monkeypatch) -> None:
    from phantomlens.settings import SweepConfig

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    backend = REAL_BACKEND(SweepConfig(contexts=["shame"], workers=1))
    backend.close()
    assert (backend.workers, backend.threads) == (1, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert sweep_module.available_cores() >= 1
