"""Devices: where a loaded model runs, and (where CUDA is visible) that runs on it match the CPU."""

from __future__ import annotations

import copy

import pytest
import torch

from phantomlens.errors import PhantomLensError
from phantomlens.models import resolve_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    for bad, message in [("tpu", "unknown device"), ("meta", "not supported")]:
        with pytest.raises(PhantomLensError, match=message):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(PhantomLensError, match="no CUDA device is visible"):
            resolve_device("cuda")


def test_run_with_an_unusable_device_is_one_error_line(tiny_dir, capsys):
    from phantomlens.cli import main

    code = main(["run", "--model", str(tiny_dir), "--context", "shame", "--steps", "1", "--device", "tpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unknown device") and len(err.splitlines()) == 1


@cuda
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_cuda_run_matches_cpu(llama, mode):
    """The same run on CUDA and on the CPU: same outcome, margins equal to float32 rounding."""
    from phantomlens.train import finetune

    model, tokenizer = llama
    settings = dict(context="shame", mode=mode, steps=8, lr=3e-2 if mode == "lora" else 3e-3)
    on_cpu = finetune(model=copy.deepcopy(model), tokenizer=tokenizer, progress=False, **settings)
    on_gpu = finetune(model=copy.deepcopy(model).cuda(), tokenizer=tokenizer, progress=False, **settings)
    assert on_gpu.summary.device.startswith("cuda") and on_cpu.summary.device == "cpu"
    for column in ("margin", "phi", "signal", "drag", "loss", "purity"):
        a, b = on_cpu.trajectory[column].to_numpy(), on_gpu.trajectory[column].to_numpy()
        assert abs(a - b).max() < 1e-3 * (1 + abs(a).max()), column
    phi = on_gpu.trajectory
    assert (phi["phi"] - phi["signal"] - phi["drag"]).abs().max() < 1e-10


@cuda
def test_cuda_prediction_and_readout_match_cpu(llama):
    from phantomlens.predict import predict_critical_lr
    from phantomlens.readout import measure

    model, tokenizer = llama
    gpu = copy.deepcopy(model).cuda()
    a = measure(model, tokenizer, "She felt a deep sense of", "shame")
    b = measure(gpu, tokenizer, "She felt a deep sense of", "shame")
    assert abs(a.phi - b.phi) < 1e-5 and abs(a.margin - b.margin) < 1e-4
    before = {k: v.clone() for k, v in gpu.state_dict().items()}
    pa = predict_critical_lr(model=model, tokenizer=tokenizer, context="shame", mode="full")
    pb = predict_critical_lr(model=gpu, tokenizer=tokenizer, context="shame", mode="full")
    assert pb.eta_c == pytest.approx(pa.eta_c, rel=1e-3)
    assert all(torch.equal(before[k], v) for k, v in gpu.state_dict().items())


def test_records_name_the_model_that_ran(llama, tiny_dir):
    """A model passed in is recorded as what it is, never as the default built-in name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phantomlens.models import describe_model
    from phantomlens.train import finetune

    model, _ = llama
    assert describe_model(model) == type(model).__name__
    loaded = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert describe_model(loaded) == str(tiny_dir)
    loaded.config._name_or_path = "/any/cache/models/gemma3-270m"
    assert describe_model(loaded) == "gemma3-270m"
    result = finetune(
        model=AutoModelForCausalLM.from_pretrained(tiny_dir),
        tokenizer=AutoTokenizer.from_pretrained(tiny_dir),
        context="shame",
        steps=1,
        progress=False,
    )
    assert result.summary.config["model"] == str(tiny_dir)


def test_stored_gpu_run_matches_the_cpu_run():
    """The committed H200 run of the default demo against the same run on the CPU (docs/runs.md)."""
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1] / "results"
    gpu = pd.read_parquet(root / "gpu-check" / "smollm2-full-shame" / "trajectory.parquet")
    cpu = pd.read_parquet(root / "phantoms" / "smollm2-full-shame-1e-06" / "trajectory.parquet")
    assert len(gpu) == len(cpu) == 51
    assert float((gpu["margin"] - cpu["margin"]).abs().max()) < 2.5e-5
    assert (gpu["margin"] > 0).idxmax() == (cpu["margin"] > 0).idxmax()  # the same flip step
