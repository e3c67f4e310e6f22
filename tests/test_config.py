"""One config story: defaults resolved at use, validation in one place, composition, JSON, flags."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from phantomlens.config import from_namespace
from phantomlens.errors import PhantomLensError
from phantomlens.settings import (
    DEFAULT_LR,
    AnalysisConfig,
    ReadoutConfig,
    RunConfig,
    StopRule,
    SweepConfig,
)

REPO = Path(__file__).resolve().parents[1]


def test_lr_default_follows_the_mode_it_is_used_with():
    """The bug: merging overrides into a dumped config froze the full-FT default LR."""
    assert RunConfig(mode="lora").peak_lr == DEFAULT_LR["lora"] == 1e-4
    assert RunConfig(**{**RunConfig().to_dict(), "mode": "lora"}).peak_lr == 1e-4
    assert RunConfig(context="shame").replace(mode="lora").peak_lr == 1e-4
    assert RunConfig(mode="lora", lr=3e-3).replace(mode="full").peak_lr == 3e-3  # given: kept
    assert RunConfig().lr is None and RunConfig().resolved().lr == DEFAULT_LR["full"]


def test_finetune_with_a_mode_override_trains_at_that_modes_default(llama):
    from phantomlens.train import finetune

    model, tokenizer = llama
    result = finetune(
        RunConfig(context="She felt a deep sense of", target=" shame", competitor=" guilt"),
        model=model,
        tokenizer=tokenizer,
        mode="lora",
        steps=1,
        progress=False,
    )
    assert result.summary.config["lr"] == DEFAULT_LR["lora"]
    assert result.trajectory["lr"].iloc[0] == pytest.approx(DEFAULT_LR["lora"])  # warm-up of 1 step


BAD_VALUES = [
    (RunConfig, {"lora_alpha": math.nan}, "lora_alpha"),
    (RunConfig, {"weight_decay": math.nan}, "weight_decay"),
    (RunConfig, {"diverge_loss": -5.0}, "diverge_loss"),
    (RunConfig, {"diverge_loss": math.nan}, "diverge_loss"),
    (RunConfig, {"steps": "3"}, "steps must be an integer"),
    (RunConfig, {"steps": 10**9}, "steps must be"),
    (RunConfig, {"lr": -1e-3}, "lr must be a positive"),
    (RunConfig, {"mode": "qlora"}, "mode must be one of full, lora"),
    (RunConfig, {"early_stop": "yes"}, "early_stop must be true or false"),
    (RunConfig, {"readout": {"spectral_mass": 2.0}}, "spectral_mass"),
    (StopRule, {"patience": 0}, "patience must be at least 1"),
    (SweepConfig, {"min_lr": 1.0, "max_lr": 1e-3}, "must be below max_lr"),
    (SweepConfig, {"workers": -1}, "workers must be at least 1"),
    (SweepConfig, {"grid": [1e-3, -1.0]}, "grid must be a positive"),
    (AnalysisConfig, {"phantom_fraction": math.nan}, "phantom_fraction"),
]


@pytest.mark.parametrize(("cls", "values", "expected"), BAD_VALUES)
def test_invalid_values_are_refused_naming_the_argument(cls, values, expected):
    with pytest.raises(PhantomLensError, match=expected) as info:
        cls.from_dict(values)
    assert "\n" not in str(info.value) and "--" not in str(info.value)


def test_groups_compose_and_flat_names_reach_them():
    config = RunConfig().replace(patience=5, center=True)
    assert config.stop == StopRule(patience=5) and config.readout == ReadoutConfig(center=True)
    sweep = SweepConfig().replace(mode="lora", lora_r=2, warmup_fraction=0.2, weight_decay=0.1)
    assert (sweep.run.mode, sweep.run.lora_r, sweep.run.warmup_fraction) == ("lora", 2, 0.2)
    assert sweep.run.weight_decay == 0.1
    with pytest.raises(PhantomLensError, match="unknown RunConfig keys: lora_rank"):
        RunConfig().replace(lora_rank=2)


@pytest.mark.parametrize("cls", [RunConfig, SweepConfig, AnalysisConfig, StopRule, ReadoutConfig])
def test_json_round_trip(cls):
    config = cls()
    assert cls.from_json(config.to_json()) == config
    assert json.loads(config.to_json()) == config.to_dict()


def test_every_stored_config_loads():
    """Files written before settings were grouped (flat keys) still load, unchanged in meaning."""
    configs = sorted(REPO.glob("results/**/config.json")) + sorted(
        REPO.glob("benchmarks/results/**/config.json")
    )
    sweeps = sorted(REPO.glob("results/**/sweep.json")) + sorted(
        REPO.glob("benchmarks/results/**/sweep.json")
    )
    assert configs and sweeps
    for path in configs:
        stored = json.loads(path.read_text())
        stored.pop("context_resolved", None)
        config = RunConfig.from_dict(stored)
        assert config.lr == stored["lr"] and config.mode == stored["mode"], path
        assert config.readout.center == stored.get("center", False), path
    for path in sweeps:
        stored = json.loads(path.read_text())
        config = SweepConfig.from_dict(stored)
        run = stored.get("run", stored)  # grouped (written now) or flat (before)
        assert config.run.model == run["model"] and config.run.steps == run["steps"], path


def _parse(*argv: str):
    from phantomlens.cli import build_parser

    return build_parser().parse_args(list(argv))


def _flags(command: str) -> set[str]:
    from phantomlens.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {flag for action in sub._actions for flag in action.option_strings}


def test_each_command_offers_only_the_flags_it_reads():
    predict = _flags("predict")
    assert not predict & {
        "--lr",
        "--early-stop",
        "--spectral-mass",
        "--patience",
        "--center",
        "--weight-decay",
    }
    assert {"--mode", "--steps", "--lora-r", "--warmup-fraction", "--schedule"} <= predict
    sweep = _flags("sweep")
    assert not sweep & {"--context", "--target", "--lr", "--early-stop", "--patience"}
    assert {
        "--lora-r",
        "--lora-alpha",
        "--warmup-fraction",
        "--weight-decay",
        "--center",
        "--tolerance",
    } <= sweep
    assert {"--patience", "--margin-safe", "--center", "--spectral-topk", "--lr"} <= _flags("run")


def test_flags_and_library_arguments_build_the_same_config():
    args = _parse("run", "--mode", "lora", "--patience", "4", "--center", "--lora-r", "2")
    assert from_namespace(RunConfig, args) == RunConfig().replace(
        mode="lora", patience=4, center=True, lora_r=2
    )
    args = _parse("sweep", "--out", "x", "--mode", "lora", "--lora-r", "2", "--tolerance", "0.05")
    config = from_namespace(SweepConfig, args)
    assert config == SweepConfig().replace(mode="lora", lora_r=2, tolerance=0.05)


def test_a_sweep_passes_every_run_setting_to_its_runs(tmp_path):
    from phantomlens.sweep import Sweep

    config = SweepConfig().replace(
        contexts=["shame"], mode="lora", lora_r=2, warmup_fraction=0.3, device="cpu"
    )
    run = RunConfig.from_dict(Sweep(config, tmp_path / "s").run_settings("shame", 1e-3))
    assert run == config.run.replace(context="shame", lr=1e-3)
