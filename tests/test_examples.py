"""The examples in examples/ run: on a tiny model in the fast tier, on SmolLM2 in the integration tier."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import make_tiny

from phantomlens import FactSetResult
from phantomlens.facts import Fact

ROOT = Path(__file__).resolve().parent.parent
FACTS = [
    Fact("The river flows into the", "sea and the", "ocean", "river"),
    Fact("Once upon a time the old man told a long", "story, a long tale", "tale", "tale"),
]


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trainer_peft_example_on_a_tiny_model(tmp_path):
    model, tokenizer = make_tiny("llama")
    callback = example("trainer_peft").train(model, tokenizer, FACTS, str(tmp_path / "out"), steps=4, lr=1e-2)
    loaded = FactSetResult.load(tmp_path / "out" / "phantomlens")
    assert loaded.summary.n_facts == 2 and loaded.config.mode == "lora" and loaded.config.schedule == "linear"
    assert callback.verdicts is not None and len(callback.verdicts) == 2


def test_plain_loop_example_on_a_tiny_model():
    model, tokenizer = make_tiny("llama")
    lines = []
    last = example("plain_loop").train(model, tokenizer, FACTS, steps=3, lr=1e-3, log=lines.append)
    assert set(last.readouts) == {"river", "tale"} and lines[0].startswith("step   1")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["trainer_peft", "plain_loop"])
def test_examples_run_on_smollm2(tmp_path, name):
    extra = ["--out", str(tmp_path / "out")] if name == "trainer_peft" else []
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py"), "--steps", "2", "--first", "3", *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    if name == "trainer_peft":
        assert "flipped; silent failures" in done.stdout
        assert FactSetResult.load(tmp_path / "out" / "phantomlens").summary.n_facts == 3
    else:
        assert "margin" in done.stdout
