"""Facts on the real SmolLM2-135M-Instruct: chat prompts, a fact-set run and prediction by command."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from phantomlens.factrun import FactSetResult
from phantomlens.facts import Fact, tokenize_fact
from phantomlens.forward import evaluation, sequence_margin
from phantomlens.settings import RunConfig
from phantomlens.train import finetune

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]


def test_a_chat_fact_uses_the_instruct_template_and_trains(smollm2):
    model, tokenizer = smollm2
    model = copy.deepcopy(model)
    fact = Fact(
        "What is the capital of Australia? Answer with the city only.", "Canberra", "Sydney", "au", True
    )
    tokenized = tokenize_fact(tokenizer, fact)
    prompt = tokenizer.decode(tokenized.prompt_ids)
    assert "<|im_start|>user" in prompt and prompt.rstrip().endswith("<|im_start|>assistant")
    assert tokenizer.decode(tokenized.target_ids) == "Canberra"  # no leading space in a chat answer
    with evaluation(model):
        m0 = float(
            sequence_margin(model, tokenized.prompt_ids, tokenized.target_ids, tokenized.competitor_ids)
        )
    result = finetune(
        RunConfig(
            context=fact.prompt,
            target="Canberra",
            competitor="Sydney",
            chat=True,
            mode="lora",
            lr=1e-3,
            steps=2,
        ),
        model=model,
        tokenizer=tokenizer,
        progress=False,
    )
    assert isinstance(result, FactSetResult)
    assert result.summary.facts[0].chat
    assert result.summary.facts[0].margin_initial == pytest.approx(m0, abs=1e-3)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "phantomlens.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )


def test_run_analyze_and_predict_a_fact_file_by_command(tmp_path):
    lines = (ROOT / "data" / "facts.jsonl").read_text().splitlines()
    facts = tmp_path / "five.jsonl"
    facts.write_text("\n".join(lines[:3] + lines[60:62]) + "\n")
    run = _cli(
        "run",
        "--facts",
        str(facts),
        "--mode",
        "lora",
        "--lr",
        "1e-3",
        "--steps",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--json",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["kind"] == "fact-set" and summary["n_facts"] == 5
    analyzed = _cli("analyze", str(tmp_path / "run"), "--jump-min-abs", "0.2", "--overwrite", cwd=tmp_path)
    assert analyzed.returncode == 0, analyzed.stderr
    assert "5 facts from" in analyzed.stdout
    predicted = _cli(
        "predict",
        "--facts",
        str(facts),
        "--mode",
        "lora",
        "--csv",
        str(tmp_path / "p.csv"),
        "--json",
        cwd=tmp_path,
    )
    assert predicted.returncode == 0, predicted.stderr
    prediction = json.loads(predicted.stdout)
    assert prediction["n_facts"] == 5 and len((tmp_path / "p.csv").read_text().splitlines()) == 6
    assert all(f["seconds"] > 0 for f in prediction["facts"])
