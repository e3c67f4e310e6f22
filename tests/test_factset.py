"""Fact-set runs on tiny models: the batched forward and readout against their one-at-a-time
definitions, a one-fact run against a single-context run, and the run directory's round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tiny_models import ARCHITECTURES, make_tiny, tiny_pair

from phantomlens.errors import PhantomLensError
from phantomlens.factreadout import FactReadout
from phantomlens.factrun import FactSetResult
from phantomlens.facts import Fact, tokenize_fact
from phantomlens.factset import FactBatch, forward_chunk
from phantomlens.forward import evaluation, last_token_logits, output_embedding, sequence_margin
from phantomlens.readout import readout_from_logits
from phantomlens.settings import ReadoutConfig, RunConfig
from phantomlens.train import finetune

FACTS = [
    Fact("She felt a deep sense of", "shame", "guilt", "single"),
    Fact("The river flows into the", "sea and the", "ocean", "multi"),
    Fact("He drove his car, his", "automobile to", "automobile, to the", "shared_prefix"),
    Fact("Once upon a time the old man told a long", "story, a long tale", "tale", "long"),
]


def write_facts(path, facts=FACTS):
    path.write_text("".join(json.dumps(f.to_dict()) + "\n" for f in facts))
    return path


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_batched_margins_and_loss_match_one_pass_per_answer(arch):
    model, tokenizer = make_tiny(arch)
    tokenized = [tokenize_fact(tokenizer, f) for f in FACTS]
    batch = FactBatch(tokenized, "cpu", micro_batch=3)  # two chunks, padding in both
    with evaluation(model):
        outputs = [forward_chunk(model, chunk) for chunk in batch.chunks]
        for fact, out_loss, out_margin, logits in zip(
            tokenized,
            torch.cat([o.loss for o in outputs]),
            torch.cat([o.logp_target - o.logp_competitor for o in outputs]),
            torch.cat([o.branch_logits for o in outputs]),
            strict=True,
        ):
            margin = sequence_margin(model, fact.prompt_ids, fact.target_ids, fact.competitor_ids)
            assert float(out_margin) == pytest.approx(float(margin), abs=2e-4)
            prefix = torch.tensor([fact.branch_prefix])
            assert torch.allclose(logits, last_token_logits(model, prefix), atol=2e-4)
            from phantomlens.forward import answer_logprobs

            expected = -answer_logprobs(model, fact.prompt_ids, fact.target_ids).mean()
            assert float(out_loss) == pytest.approx(float(expected), abs=2e-4)


def test_batched_readout_equals_the_single_context_readout():
    model, tokenizer = make_tiny("llama-untied")
    tokenized = [tokenize_fact(tokenizer, f) for f in FACTS]
    batch = FactBatch(tokenized, "cpu")
    unembedding = output_embedding(model)
    for center in (False, True):
        config = ReadoutConfig(center=center, spectral_topk=64)
        readout = FactReadout(unembedding, batch.target_ids, batch.competitor_ids, config)
        with evaluation(model):
            out = forward_chunk(model, batch.chunks[0])
        sequence = {"loss": out.loss, "logp_target": out.logp_target, "logp_competitor": out.logp_competitor}
        readout.record(0, 1e-3, out.branch_logits, sequence)
        table = readout.frame([t.fact.label for t in tokenized])
        for row, fact, logits in zip(table.itertuples(), tokenized, out.branch_logits, strict=True):
            single, _ = readout_from_logits(
                logits, unembedding, fact.target_id, fact.competitor_id, center=center, spectral_topk=64
            )
            for field in ("phi", "signal", "drag", "overlap_tc", "p_target", "fidelity_target"):
                # fp32 products of different shapes: ~1e-8 apart
                assert getattr(row, field) == pytest.approx(getattr(single, field), abs=1e-6), field
            assert row.margin_branch == pytest.approx(single.margin, abs=1e-9)
            assert row.loss_branch == pytest.approx(single.loss, abs=1e-9)
            assert (row.rank_target, row.topk) == (single.rank_target, single.topk)
            assert row.purity == pytest.approx(single.purity, abs=1e-5)
            assert row.entropy == pytest.approx(single.entropy, abs=1e-4)
            assert row.phi == pytest.approx(row.signal + row.drag, abs=1e-12)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_one_single_token_fact_trains_exactly_as_a_context(tmp_path, mode):
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer)
    settings = dict(mode=mode, lr=3e-2 if mode == "full" else 3e-1, steps=6)
    context = finetune(
        RunConfig(context=FACTS[0].prompt, target=target, competitor=competitor, **settings),
        model=model,
        tokenizer=tokenizer,
        progress=False,
    )
    model, tokenizer = make_tiny("llama")
    path = write_facts(tmp_path / "one.jsonl", [Fact(FACTS[0].prompt, target, competitor, "one")])
    facts = finetune(RunConfig(facts=str(path), **settings), model=model, tokenizer=tokenizer, progress=False)
    assert isinstance(facts, FactSetResult)
    rows = facts.fact_trajectory("one")
    assert len(rows) == len(context.trajectory) == 7
    for column in ("loss", "margin", "phi", "signal", "drag", "readout_1", "geometric_1", "p_target"):
        np.testing.assert_allclose(rows[column], context.trajectory[column], rtol=1e-6, atol=1e-9)
    assert facts.summary.facts[0].outcome == context.summary.outcome


def test_fact_set_run_directory_round_trip(tmp_path):
    model, tokenizer = make_tiny("gpt2")
    path = write_facts(tmp_path / "facts.jsonl")
    result = finetune(
        RunConfig(facts=str(path), lr=1e-2, steps=5, micro_batch=2),
        model=model,
        tokenizer=tokenizer,
        out=tmp_path / "run",
        progress=False,
    )
    summary = result.summary
    assert summary.n_facts == 4 and len(result.trajectory) == 4 * 6
    assert set(result.trajectory["fact"]) == {f.name for f in FACTS}
    assert summary.n_flipped == sum(f.flipped_at_end for f in summary.facts)
    assert summary.silent_failures == [f.name for f in summary.facts if f.silent]
    loaded = FactSetResult.load(tmp_path / "run")
    assert loaded.summary.to_dict() == summary.to_dict()
    assert loaded.analyze().summary.facts == summary.facts
    assert (tmp_path / "run" / "overview.png").stat().st_size > 1000
    assert summary.facts[2].branch == 1  # "automobile" is shared: the answers branch after it


def test_frozen_embeddings_give_exactly_zero_geometric_terms_under_lora(tmp_path):
    model, tokenizer = make_tiny("llama")
    path = write_facts(tmp_path / "facts.jsonl")
    result = finetune(
        RunConfig(facts=str(path), mode="lora", lr=1e-1, steps=4),
        model=model,
        tokenizer=tokenizer,
        progress=False,
    )
    rows = result.trajectory[result.trajectory["step"] > 0]
    assert (rows["geometric_1"] == 0).all() and (rows["cross_1"] == 0).all()
    assert result.summary.embeddings_unchanged


def test_a_multi_token_single_fact_run_and_a_missing_competitor(tmp_path):
    model, tokenizer = make_tiny("llama")
    result = finetune(
        RunConfig(
            context="The river flows into the", target="sea and the", competitor="ocean", steps=2, lr=1e-3
        ),
        model=model,
        tokenizer=tokenizer,
        progress=False,
    )
    assert isinstance(result, FactSetResult) and result.summary.n_facts == 1
    with pytest.raises(PhantomLensError, match="competitor must be given"):
        finetune(
            RunConfig(context="The river flows into the", target="sea and the", steps=2),
            model=model,
            tokenizer=tokenizer,
            progress=False,
        )
    path = write_facts(tmp_path / "pick.jsonl", [Fact("She felt a deep sense of", "shame", name="pick")])
    picked = finetune(
        RunConfig(facts=str(path), steps=1, lr=1e-3), model=model, tokenizer=tokenizer, progress=False
    )
    assert picked.summary.facts[0].competitor.strip() != "shame"


def test_a_diverging_fact_set_is_recorded(tmp_path):
    model, tokenizer = make_tiny("llama")
    path = write_facts(tmp_path / "facts.jsonl")
    result = finetune(
        RunConfig(facts=str(path), lr=50.0, steps=6, diverge_loss=7.0),
        model=model,
        tokenizer=tokenizer,
        progress=False,
    )
    assert result.status == "diverged"
    assert all(f.outcome == "diverged" for f in result.summary.facts)
    assert not math.isnan(result.summary.loss_initial)


def test_fact_names_with_mathtext_are_drawn_as_text(tmp_path):
    model, tokenizer = make_tiny("llama")
    hostile = [Fact(FACTS[0].prompt, "shame", "guilt", r"a $\notacmd$ b"), FACTS[1]]
    path = write_facts(tmp_path / "hostile.jsonl", hostile)
    finetune(
        RunConfig(facts=str(path), steps=1, lr=1e-3),
        model=model,
        tokenizer=tokenizer,
        out=tmp_path / "run",
        progress=False,
    )
    assert (tmp_path / "run" / "overview.png").is_file()


def test_fact_files_keep_quoted_newlines_line_separators_and_refuse_bad_headers(tmp_path):
    from phantomlens.facts import load_facts

    csv_file = tmp_path / "f.csv"
    csv_file.write_text(
        '\ufeffprompt,target,competitor\n"The boat\nsailed on the",sea,ocean\n', encoding="utf-8"
    )
    assert load_facts(csv_file)[0].prompt == "The boat\nsailed on the"  # BOM dropped, newline kept
    jsonl = tmp_path / "f.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a\u2028b", "target": "x", "competitor": "y"}, ensure_ascii=False))
    assert load_facts(jsonl)[0].prompt == "a\u2028b"
    twice = tmp_path / "twice.csv"
    twice.write_text("prompt,target,target,competitor\na,b,c,d\n")
    with pytest.raises(PhantomLensError, match="names target twice"):
        load_facts(twice)
    with pytest.raises(PhantomLensError, match="is a directory"):
        load_facts(tmp_path)


def test_a_picked_competitor_is_trained_as_the_token_the_rule_picked():
    from phantomlens.contexts import pick_competitor
    from phantomlens.facttrain import resolve_fact

    model, tokenizer = make_tiny("llama")
    fact = Fact("She felt a deep sense of", "shame", name="pick")
    resolved = resolve_fact(tokenizer, model, fact)
    expected = pick_competitor(model, torch.tensor([resolved.prompt_ids]), resolved.target_id)
    assert resolved.competitor_ids == (expected,) and resolved.branch == 0


def test_a_damaged_fact_set_directory_is_one_error(tmp_path):
    import pandas as pd

    model, tokenizer = make_tiny("llama")
    path = write_facts(tmp_path / "facts.jsonl")
    finetune(
        RunConfig(facts=str(path), steps=2, lr=1e-3),
        model=model,
        tokenizer=tokenizer,
        out=tmp_path / "run",
        progress=False,
    )
    table = pd.read_parquet(tmp_path / "run" / "trajectory.parquet")
    damages = {
        "twice": pd.concat([table, table.iloc[:1]]),
        "missing": table[table["fact"] != "multi"],
        "short": table[~((table["fact"] == "multi") & (table["step"] == 2))],
        "flipped": table.assign(margin=-table["margin"].abs() - 1),
    }
    for frame in damages.values():
        frame.to_parquet(tmp_path / "run" / "trajectory.parquet", index=False)
        with pytest.raises(PhantomLensError, match=r"damaged|twice|lacks|no rows"):
            FactSetResult.load(tmp_path / "run")

    from phantomlens.rundir import RunResult

    with pytest.raises(PhantomLensError, match=r"FactSetResult\.load"):
        RunResult.load(tmp_path / "run")


def test_outputs_that_would_overwrite_an_input_or_cannot_be_written_are_refused(tmp_path):
    from pathlib import Path

    from phantomlens.atomic import check_not_an_input, check_output_dir

    facts = write_facts(tmp_path / "facts.jsonl")
    with pytest.raises(PhantomLensError, match="overwrite the input"):
        check_not_an_input(facts, [facts])
    (tmp_path / "run").mkdir()
    with pytest.raises(PhantomLensError, match="overwrite the input"):
        check_not_an_input(tmp_path / "run" / "summary.json", [tmp_path / "run"])
    if Path("/proc/self").exists():
        with pytest.raises(PhantomLensError, match="cannot write under"):
            check_output_dir(Path("/proc/no_such_dir/out"))


def test_predict_facts_takes_a_path_facts_or_dicts(tmp_path):
    from phantomlens.factpredict import predict_facts

    model, tokenizer = make_tiny("llama")
    path = write_facts(tmp_path / "facts.jsonl", FACTS[:2])
    by_path = predict_facts(model=model, tokenizer=tokenizer, facts=path)
    by_dicts = predict_facts(model=model, tokenizer=tokenizer, facts=[f.to_dict() for f in FACTS[:2]])
    assert [f.name for f in by_path.facts] == [f.name for f in by_dicts.facts] == ["single", "multi"]
    assert by_path.facts[1].eta_c_joint == pytest.approx(by_dicts.facts[1].eta_c_joint, rel=1e-9)
    with pytest.raises(PhantomLensError, match="facts must be"):
        predict_facts(model=model, tokenizer=tokenizer, facts=3)
