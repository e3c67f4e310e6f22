"""The HTML report of fact-set runs, alone and mixed with single-context runs, on tiny models."""

from __future__ import annotations

import html
import json
import re
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest
from tiny_models import make_tiny, tiny_pair

from phantomlens.cli import main
from phantomlens.errors import PhantomLensError
from phantomlens.factresults import FactSetEvents
from phantomlens.factrun import FactSetResult
from phantomlens.facts import Fact
from phantomlens.report import build_report, fact_order
from phantomlens.settings import RunConfig
from phantomlens.train import finetune

HOSTILE = 'evil <script>alert("x")</script> & co'
FACTS = [
    Fact("She felt a deep sense of", "shame", "guilt", HOSTILE),
    Fact("The river flows into the", "sea and the", "ocean", "multi"),
    Fact("He drove his car, his", "automobile to", "automobile, to the", "shared_prefix"),
    Fact("Once upon a time the <b>old</b> man told a long", "story, a long tale", "tale", "long"),
]
PNG = "data:image/png;base64,"


def write_jsonl(path, facts):
    path.write_text("".join(json.dumps(f.to_dict()) + "\n" for f in facts))
    return path


@pytest.fixture(scope="module")
def fact_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("facts")
    model, tokenizer = make_tiny("llama")
    config = RunConfig(facts=str(write_jsonl(root / "facts.jsonl", FACTS)), lr=0.2, steps=6)
    finetune(config, model=model, tokenizer=tokenizer, out=root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer)
    finetune(
        model=model,
        tokenizer=tokenizer,
        context="She felt a deep sense of",
        target=target,
        competitor=competitor,
        steps=4,
        lr=0.05,
        out=out,
        progress=False,
    )
    return out


def detail_names(page: str) -> list[str]:
    """The fact names of the per-fact sections, in page order, unescaped."""
    return [html.unescape(m) for m in re.findall(r"<details id=\S+><summary><b>(.*?)</b>", page)]


def test_fact_set_report_escapes_every_name_and_collapses_each_fact(fact_run):
    page = build_report([fact_run])
    assert "<script>" not in page and "<b>old</b>" not in page  # user text stays text
    for fact in FACTS:
        assert html.escape(fact.name) in page and html.escape(fact.prompt) in page
    assert page.count("<details") == len(FACTS) and "<details open" not in page
    assert page.count(PNG) == 1 + len(FACTS)  # the overview and one thumbnail per fact
    assert "alt='overview of run 1'" in page and "fact set of 4 facts" in page
    assert "http://" not in page and "https://" not in page
    result = FactSetResult.load(fact_run)
    expected = [f.name for f in fact_order(result.summary.facts)]
    assert detail_names(page) == expected
    for name in result.silent_failures:  # named in the headline
        assert f"<code>{html.escape(name)}</code>" in page.split("<table")[0]


def test_sections_put_silent_failures_then_failures_then_successes():
    facts = [
        SimpleNamespace(name="ok", outcome="success", silent=False),
        SimpleNamespace(name="bad", outcome="structural", silent=False),
        SimpleNamespace(name="ok2", outcome="success", silent=False),
        SimpleNamespace(name="quiet", outcome="kinematic", silent=True),
        SimpleNamespace(name="blown", outcome="diverged", silent=False),
    ]
    assert [f.name for f in fact_order(facts)] == ["quiet", "bad", "blown", "ok", "ok2"]


def test_facts_option_limits_the_sections_not_the_table(fact_run, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text(f"multi\n\n{HOSTILE}\n")
    out = tmp_path / "r.html"
    assert main(["report", str(fact_run), "--facts", str(names), "--out", str(out)]) == 0
    page = out.read_text()
    assert sorted(detail_names(page)) == sorted(["multi", HOSTILE])
    assert page.count(PNG) == 1 + 2 and "2 of 4 facts (--facts)" in page
    table = page[
        page.index("<table class=facts>") : page.index("</table>", page.index("<table class=facts>"))
    ]
    assert all(html.escape(f.name) in table for f in FACTS)  # every fact stays in the table
    subset = write_jsonl(tmp_path / "subset.jsonl", [FACTS[2]])  # a fact file works too
    assert main(["report", str(fact_run), "--facts", str(subset), "--out", str(out)]) == 0
    assert detail_names(out.read_text()) == ["shared_prefix"]


def test_unknown_fact_name_is_one_error_line_and_nothing_is_written(fact_run, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("multi\nno <such> fact\n")
    out = tmp_path / "r.html"
    assert main(["report", str(fact_run), "--facts", str(names), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no <such> fact" in err[0]
    assert not out.exists()


def test_facts_option_without_a_fact_set_run_is_an_error(single_run, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("multi\n")
    out = tmp_path / "r.html"
    assert main(["report", str(single_run), "--facts", str(names), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "fact-set run" in err[0]
    assert main(["report", str(single_run), "--facts", str(tmp_path / "gone.txt"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_mixed_single_and_fact_set_report(single_run, fact_run, tmp_path):
    out = tmp_path / "m.html"
    assert main(["report", str(single_run), str(fact_run), str(single_run), "--out", str(out)]) == 0
    page = out.read_text()
    assert "<h2>Run 1: " in page and "<h2>Run 2: fact set of 4 facts" in page and "<h2>Run 3: " in page
    assert "Overlay of 2 runs" in page  # of the single-context runs only
    assert page.count(PNG) == 1 + 2 + 1 + len(FACTS)  # overlay, two runs, overview, thumbnails
    assert page.count("<details") == len(FACTS) and "<script>" not in page


def test_bad_run_directories_fail_in_one_line_and_write_nothing(fact_run, tmp_path, capsys):
    out = tmp_path / "r.html"
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(fact_run, corrupt)
    (corrupt / "summary.json").write_text('{"kind": "fact-set", "n_facts": ')
    contradicting = tmp_path / "contradicting"
    shutil.copytree(fact_run, contradicting)
    summary = json.loads((contradicting / "summary.json").read_text())
    summary["n_facts"] += 1
    (contradicting / "summary.json").write_text(json.dumps(summary))
    for bad in (tmp_path / "empty", corrupt, contradicting):
        assert main(["report", str(fact_run), str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
        assert not out.exists()
    with pytest.raises(PhantomLensError):
        build_report([corrupt])


def hundred_facts(result: FactSetResult, n: int = 100) -> FactSetResult:
    """``n`` facts made from the run's few by renaming copies; every third one made a silent
    failure, so the order of the sections has something to sort."""
    records, events, frames = [], {}, []
    for i in range(n):
        old = result.summary.facts[i % len(result.summary.facts)]
        name = f"fact {i:03d} <i>{old.name}</i>"
        silent = i % 3 == 0
        records.append(
            old.replace(
                name=name,
                silent=silent,
                outcome="kinematic" if silent else old.outcome,
                flipped_at_end=False if silent else old.flipped_at_end,
            )
        )
        events[name] = result.events.facts[old.name]
        rows = result.fact_trajectory(old.name).assign(fact=name)
        if silent:  # the trajectory must agree with the record: the target never ahead
            rows = rows.assign(margin=-rows["margin"].abs() - 0.1)
        frames.append(rows)
    summary = result.summary.replace(
        facts=records,
        n_facts=n,
        n_flipped=sum(r.flipped_at_end for r in records),
        fraction_flipped=sum(r.flipped_at_end for r in records) / n,
        silent_failures=[r.name for r in records if r.silent],
        outcomes={o: sum(r.outcome == o for r in records) for o in sorted({r.outcome for r in records})},
    )
    fact_events = FactSetEvents(kind=result.events.kind, facts=events, thresholds=result.events.thresholds)
    return FactSetResult(summary, pd.concat(frames, ignore_index=True), fact_events)


def test_a_hundred_fact_report_stays_small(fact_run, tmp_path):
    big = hundred_facts(FactSetResult.load(fact_run))
    big.save(tmp_path / "big")
    page = build_report([tmp_path / "big"])
    assert len(page.encode()) < 4_000_000  # ~1.6 MB: thumbnails, not full-size figures
    thumbnails = re.findall(r"<img alt='margin of fact [^']*' src='data:image/png;base64,([^']+)'", page)
    assert len(thumbnails) == 100 and max(map(len, thumbnails)) < 40_000
    assert page.count("<details") == 100 and "<details open" not in page
    names = detail_names(page)
    assert names[:34] == [r.name for r in big.summary.facts if r.silent]  # silent failures first
    assert "<i>multi</i>" not in page and "&lt;i&gt;multi&lt;/i&gt;" in page


@pytest.fixture(scope="module")
def callback_export(tmp_path_factory):
    """What PhantomCallback exports from inside a Hugging Face Trainer (facts and context None)."""
    import torch
    from transformers import Trainer, TrainingArguments, default_data_collator

    from phantomlens.callback import PhantomCallback
    from phantomlens.facts import tokenize_fact
    from phantomlens.settings import StopRule

    root = tmp_path_factory.mktemp("trainer")
    model, tokenizer = make_tiny("llama")
    fact = tokenize_fact(tokenizer, FACTS[1])
    ids = [*fact.prompt_ids, *fact.target_ids]
    item = {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "labels": torch.tensor([-100] * len(fact.prompt_ids) + list(fact.target_ids)),
    }
    settings = {"max_steps": 3, "per_device_train_batch_size": 1, "learning_rate": 1e-3, "report_to": [],
                "use_cpu": True, "disable_tqdm": True, "save_strategy": "no"}  # fmt: skip
    callback = PhantomCallback(FACTS, rule=StopRule(margin_safe=1e9, patience=1))
    Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(root), **settings),
        train_dataset=[item] * 4,
        processing_class=tokenizer,
        callbacks=[callback],
        data_collator=default_data_collator,
    ).train()
    return root / "phantomlens"


def test_a_phantomcallback_export_is_described_as_one_in_analyze_and_report(callback_export, capsys):
    stored = json.loads((callback_export / "summary.json").read_text())
    assert stored["config"]["facts"] is None and stored["config"]["context"] is None  # what it writes
    assert main(["analyze", str(callback_export)]) == 0
    out = capsys.readouterr().out
    said = "4 facts watched by PhantomCallback (Hugging Face Trainer)"
    assert out.startswith(f"facts     {said} on ") and "(--context)" not in out
    page = build_report([callback_export])
    assert f"<h2>Run 1: fact set of {said}</h2>" in page and "one fact" not in page


def test_one_function_says_where_a_fact_sets_facts_came_from(fact_run):
    from phantomlens.clifacts import fact_source

    summary = FactSetResult.load(fact_run).summary
    assert fact_source(summary) == f"4 facts from {summary.config['facts']}"
    unnamed = {**summary.config, "facts": None, "context": None}
    assert fact_source(summary.replace(config=unnamed, notes=[])) == "4 facts watched by PhantomCallback"
    one = summary.replace(config={**summary.config, "facts": None, "context": "She felt"})
    assert fact_source(one) == "4 facts (--context)"
