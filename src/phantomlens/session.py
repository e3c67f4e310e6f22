"""What a run needs before its first step: settings resolved, model loaded and prepared, optimiser.

``setup_run`` is shared by ``finetune`` and ``predict_critical_lr`` so that a prediction is made
for exactly the run that the same arguments would train: same model preparation (full or LoRA),
same LoRA initialisation seed, same schedule.
"""

from __future__ import annotations

import hashlib
import math
import platform
from pathlib import Path
from typing import Any

import torch

from phantomlens.contexts import ResolvedContext, lookup_context, resolve
from phantomlens.errors import PhantomLensError
from phantomlens.settings import RunConfig


def schedule_factor(step: int, steps: int, schedule: str = "cosine", warmup_fraction: float = 0.1) -> float:
    """The LR multiplier s_t (peak 1) at step ``step`` of ``steps``.

    cosine: linear warm-up over W = ⌈warmup_fraction·T⌉ steps reaching 1 on the last warm-up step,
    then cosine decay that would reach 0 at t = T. Warm-up starts at 1/W, not 0, so no step is wasted.
    linear: exactly HF's ``get_linear_schedule_with_warmup`` with W warm-up steps (the Trainer's
    default): warm-up t/W (so step 0 is at LR 0, as there), then linear decay (T − t)/(T − W)
    reaching 0 at t = T. A Trainer run and ``--schedule linear`` then have the same Σ s_t.
    """
    if schedule == "constant":
        return 1.0
    if schedule not in ("cosine", "linear"):
        raise PhantomLensError(f"schedule must be cosine, linear or constant, got {schedule!r}")
    warmup = math.ceil(warmup_fraction * steps) if warmup_fraction > 0 else 0
    if step < warmup:
        return step / warmup if schedule == "linear" else (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_factors(steps: int, schedule: str = "cosine", warmup_fraction: float = 0.1) -> list[float]:
    """s_t for t = 0..T-1 (T is bounded by ``settings.MAX_STEPS``)."""
    return [schedule_factor(t, steps, schedule, warmup_fraction) for t in range(steps)]


def setup_run(
    config: RunConfig | None, model, tokenizer, overrides: dict[str, Any]
) -> tuple[RunConfig, Any, Any, ResolvedContext]:
    """The config (fields overridable by keyword), the model on its device, and the resolved context."""
    config, model, tokenizer = load_for_run(config, model, tokenizer, overrides)
    return config, model, tokenizer, resolve_run_context(config, tokenizer, model)


def load_for_run(
    config: RunConfig | None, model, tokenizer, overrides: dict[str, Any]
) -> tuple[RunConfig, Any, Any]:
    """The config (fields overridable by keyword) checked as far as it can be without a model,
    and the model on its device (``config.model`` loaded unless a model is passed)."""
    from phantomlens.models import describe_model, load_model, resolve_device

    config = (config or RunConfig()).replace(**overrides)
    precheck_context(config)
    if isinstance(model, str | Path):
        raise PhantomLensError(
            f"model= takes a loaded model (with tokenizer=); to load {str(model)!r} by name or path, "
            "pass it in the config: RunConfig(model=...)"
        )
    if (model is None) != (tokenizer is None):
        raise PhantomLensError("pass both model and tokenizer, or neither")
    if model is None:
        device = resolve_device(config.device)
        model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code)
        model.to(device)
    else:
        config = config.replace(model=describe_model(model))  # records name what actually ran
    return config, model, tokenizer


def precheck_context(config: RunConfig) -> None:
    """What can be refused before a model is loaded (seconds to minutes): a bad fact file, an empty
    context, a competitor spelled like the target. Tokenisation checks need the tokenizer."""
    if config.facts is not None:
        from phantomlens.facts import load_facts

        given = [f"--{name}" for name in ("context", "target", "competitor") if getattr(config, name)]
        if given:
            raise PhantomLensError(
                f"--facts trains the facts of a file; {', '.join(given)} names one context: "
                "give one or the other"
            )
        load_facts(config.facts)
        return
    if lookup_context(config.context) is None and not (config.context or "").strip():
        raise PhantomLensError("context is empty; give the text that the target should continue")
    target, competitor = (config.target or "").strip(), (config.competitor or "").strip()
    if target and target == competitor:
        raise PhantomLensError(
            f"competitor {config.competitor!r} is the same token as the target; "
            "give a different near-synonym as the competitor"
        )


def resolve_run_context(config: RunConfig, tokenizer, model) -> ResolvedContext:
    builtin = lookup_context(config.context)
    if builtin and not (config.target or config.competitor):  # new words make it another context
        from phantomlens.models import check_context_for_model

        check_context_for_model(config.model, builtin.name)
    text = builtin.text if builtin else config.context
    target = config.target or (builtin.target if builtin else None)
    competitor = config.competitor or (builtin.competitor if builtin else None)
    if builtin and config.target and not config.competitor:
        competitor = None  # a new target on a built-in text: pick a competitor for it
    return resolve(tokenizer, text, target, competitor, model=model)


def prepare_model(model, config: RunConfig):
    """Make the parameters that ``config.mode`` trains trainable; wrap in LoRA when asked."""
    is_peft = hasattr(model, "peft_config")
    if config.mode == "full":
        if is_peft:
            raise PhantomLensError(
                "the model is PEFT-wrapped; use mode 'lora', or pass the base model for a full run"
            )
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    if is_peft:
        return model  # train the user's own adapters as configured
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=config.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:
        raise PhantomLensError(
            f"LoRA could not be applied ({str(exc).splitlines()[0]}); "
            "pass lora_target_modules with the attention projection names of this model"
        ) from None


def make_optimizer(
    config: RunConfig, parameters: list[torch.nn.Parameter], fused: bool = False
) -> torch.optim.Optimizer:
    """The run's optimiser. ``fused``: torch's fused AdamW kernel (the same update in one pass over
    memory, about 3x faster on a CPU), for the prediction's replays; the run itself keeps the default."""
    if config.optimizer == "adamw":
        settings = {"lr": config.peak_lr, "betas": (0.9, 0.999), "eps": 1e-8}
        settings["weight_decay"] = config.weight_decay
        if fused:
            try:
                return torch.optim.AdamW(parameters, fused=True, **settings)
            except (RuntimeError, ValueError):  # a device or dtype the fused kernel lacks
                pass
        return torch.optim.AdamW(parameters, **settings)
    return torch.optim.SGD(parameters, lr=config.peak_lr, momentum=config.momentum)


def embedding_sha256(model) -> str:
    """SHA-256 of the input embedding matrix (and the output one too when untied)."""
    digest = hashlib.sha256()
    seen: set[int] = set()
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is None or not hasattr(module, "weight"):
            continue
        weight = module.weight
        if weight.data_ptr() in seen:
            continue
        seen.add(weight.data_ptr())
        # The raw bytes: numpy has no bfloat16, and for fp32 these are the bytes numpy would give.
        array = weight.detach().cpu().contiguous().view(torch.uint8).numpy()
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def device_name(device: torch.device) -> str | None:
    """A CUDA device's own name ("NVIDIA H100 80GB HBM3"), so that run times name the card; None
    on the CPU (its times are this machine's)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


def versions() -> dict[str, str]:
    import peft
    import transformers

    from phantomlens.version import __version__

    return {
        "phantomlens": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }
