"""Instrumented fine-tuning runs (METHOD.md §4): one context, T steps, the readout at every step.

Each step does one forward pass with autograd; the readout is taken from those same logits before
the update (so instrumentation adds no forward pass), then the optimiser steps. After the last
update one more no-grad forward gives the final readout, so a T-step run has T + 1 rows.
Dropout is off throughout (the model stays in eval mode): the protocol is deterministic.
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch

from phantomlens.config import JsonConfig, option
from phantomlens.contexts import ResolvedContext, lookup_context, resolve
from phantomlens.errors import PhantomLensError
from phantomlens.models import DEFAULT_MODEL
from phantomlens.readout import (
    SPECTRAL_MASS,
    SPECTRAL_TOPK,
    Readout,
    ReadoutState,
    SpectrumInput,
    evaluation,
    last_token_logits,
    output_embedding,
    readout_from_logits,
    spectrum_input,
    spectrum_of,
)
from phantomlens.transitions import AnalysisConfig, analyze, summary_fields

#: Default peak LR per mode: chosen so that the default context flips mid-run on SmolLM2-135M
#: (full: flip at step 22 of 50; LoRA: step 32), which shows the regime phantomlens is about.
DEFAULT_LR = {"full": 1e-6, "lora": 1e-4}


@dataclass
class RunConfig(JsonConfig):
    """Settings of one instrumented fine-tuning run. Every field is also a ``phantomlens run`` flag."""

    model: str = option(DEFAULT_MODEL, "built-in model name, local HF directory, .gguf file or hub id")
    context: str | None = option(
        None, "a built-in context name (see `phantomlens contexts`) or the context text itself"
    )
    target: str | None = option(None, "the correct next word, a single token (leading space added)")
    competitor: str | None = option(
        None, "the near-synonym to beat, a single token; omitted: picked by the documented rule"
    )
    mode: str = option("full", "train all weights, or LoRA adapters only", choices=("full", "lora"))
    lr: float | None = option(None, "peak learning rate η (default: 1e-6 full, 1e-4 LoRA)")
    steps: int = option(50, "number of optimiser steps T")
    schedule: str = option(
        "cosine",
        "linear warm-up then cosine decay to 0, or constant",
        choices=("cosine", "constant"),
    )
    warmup_fraction: float = option(0.1, "fraction of the steps spent in linear warm-up (cosine)")
    optimizer: str = option("adamw", "optimiser", choices=("adamw", "sgd"))
    weight_decay: float = option(0.0, "AdamW weight decay")
    momentum: float = option(0.0, "SGD momentum")
    seed: int = option(0, "random seed (LoRA initialisation)")
    center: bool = option(False, "centred token states (subtract the mean embedding) instead of raw")
    lora_r: int = option(8, "LoRA rank")
    lora_alpha: float = option(16.0, "LoRA alpha")
    lora_target_modules: list[str] | None = option(
        None, "LoRA target modules (default: PEFT's attention q/v projections for the architecture)"
    )
    diverge_loss: float | None = option(
        None, "loss above which the run counts as diverged (default: max(2 ln V, 2 × initial loss))"
    )
    spectral_mass: float = option(SPECTRAL_MASS, "probability mass the top-k spectrum must cover")
    spectral_topk: int = option(
        SPECTRAL_TOPK, "largest k for purity and entropy; 0 skips them (the cheapest readout)"
    )
    trust_remote_code: bool = option(False, "allow a hub model's own code to run (off by default)")
    device: str = option(
        "auto",
        "where a model phantomlens loads runs: auto (CUDA when visible), cpu, cuda, cuda:N; "
        "a model passed in stays where it is",
    )
    early_stop: bool = option(
        False, "stop once the flip is secure (margin ≥ --margin-safe for --patience steps)"
    )
    margin_safe: float = option(1.0, "early stopping: the margin (logits) the flip must keep")
    patience: int = option(3, "early stopping: consecutive steps the margin must hold")

    def __post_init__(self) -> None:
        if self.lr is None:
            self.lr = DEFAULT_LR.get(self.mode, DEFAULT_LR["full"])

    def validate(self) -> None:
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise PhantomLensError(f"--lr must be a positive finite number, got {self.lr}")
        if self.steps < 1:
            raise PhantomLensError(f"--steps must be at least 1, got {self.steps}")
        if not 0 <= self.warmup_fraction < 1:
            raise PhantomLensError(f"--warmup-fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.mode not in ("full", "lora"):
            raise PhantomLensError(f"--mode must be full or lora, got {self.mode!r}")
        if self.schedule not in ("cosine", "constant"):
            raise PhantomLensError(f"--schedule must be cosine or constant, got {self.schedule!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise PhantomLensError(f"--optimizer must be adamw or sgd, got {self.optimizer!r}")
        if not 0 < self.spectral_mass <= 1 or self.spectral_topk < 0:
            raise PhantomLensError("--spectral-mass must be in (0, 1] and --spectral-topk ≥ 0")


def schedule_factors(steps: int, schedule: str = "cosine", warmup_fraction: float = 0.1) -> list[float]:
    """The LR multiplier s_t (peak 1) for t = 0..T-1.

    cosine: linear warm-up over ⌈warmup_fraction·T⌉ steps reaching 1 on the last warm-up step, then
    cosine decay that would reach 0 at t = T. Warm-up starts at 1/W, not 0, so no step is wasted.
    """
    if schedule == "constant":
        return [1.0] * steps
    warmup = math.ceil(warmup_fraction * steps) if warmup_fraction > 0 else 0
    factors = []
    for t in range(steps):
        if t < warmup:
            factors.append((t + 1) / warmup)
        else:
            progress = (t - warmup) / max(1, steps - warmup)
            factors.append(0.5 * (1.0 + math.cos(math.pi * progress)))
    return factors


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
        array = weight.detach().cpu().contiguous().numpy()
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def versions() -> dict[str, str]:
    import peft
    import transformers

    from phantomlens import __version__

    return {
        "phantomlens": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
    }


@dataclass
class RunResult:
    """A finished run: the per-step trajectory and the summary (both also written to the run dir)."""

    summary: dict
    trajectory: pd.DataFrame
    out_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    events: dict = field(default_factory=dict)  # the transitions analysis (events.json)

    @property
    def status(self) -> str:
        return self.summary["status"]

    @property
    def flipped(self) -> bool:
        return bool(self.summary["flipped"])


def setup_run(config: RunConfig | None, model, tokenizer, overrides: dict):
    """The validated config (fields overridable by keyword), the model, and the resolved context."""
    from phantomlens.models import describe_model, load_model, resolve_device

    config = RunConfig(**{**(config.to_dict() if config else {}), **overrides})
    config.validate()
    if (model is None) != (tokenizer is None):
        raise PhantomLensError("pass both model and tokenizer, or neither")
    if model is None:
        device = resolve_device(config.device)
        model, tokenizer = load_model(config.model, trust_remote_code=config.trust_remote_code)
        model.to(device)
    else:
        config.model = describe_model(model)  # records say what actually ran, not the default name
    return config, model, tokenizer, resolve_run_context(config, tokenizer, model)


def resolve_run_context(config: RunConfig, tokenizer, model) -> ResolvedContext:
    builtin = lookup_context(config.context)
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
                "the model is PEFT-wrapped; use --mode lora, or pass the base model for a full run"
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
            "pass --lora-target-modules with the attention projection names of this model"
        ) from None


def make_optimizer(config: RunConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            parameters, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum)


def _changes(now: ReadoutState, before: ReadoutState | None) -> dict[str, float]:
    """ΔΦ = R + Γ + X between two readouts (METHOD.md §6), and how far ê_c and ê_n moved."""
    if before is None:
        nan = math.nan
        return {"dphi": nan, "readout": nan, "geometric": nan, "cross": nan}
    dp = now.p - before.p
    dw = now.weight - before.weight
    return {
        "dphi": float(now.p @ now.weight - before.p @ before.weight),
        "readout": float(dp @ before.weight),
        "geometric": float(before.p @ dw),
        "cross": float(dp @ dw),
    }


def _displacement(now: ReadoutState, before: ReadoutState | None) -> tuple[float, float]:
    if before is None:
        return math.nan, math.nan
    return (
        float((now.state_target - before.state_target).norm()),
        float((now.state_competitor - before.state_competitor).norm()),
    )


class Recorder:
    """Turns successive readouts into trajectory rows, with lag-1 and lag-2 changes."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.history: list[ReadoutState] = []

    def add(self, step: int, lr: float, readout, state: ReadoutState) -> dict:
        previous = self.history[-1] if self.history else None
        earlier = self.history[-2] if len(self.history) >= 2 else None
        row = {"step": step, "lr": lr, **readout.to_dict()}
        row.update({f"{k}_1": v for k, v in _changes(state, previous).items()})
        row.update({f"{k}_2": v for k, v in _changes(state, earlier).items()})
        row["disp_target"], row["disp_competitor"] = _displacement(state, previous)
        self.rows.append(row)
        self.history = [*self.history[-1:], state]
        return row


@dataclass
class Pending:
    """A readout whose top-k spectrum may still be computing in the worker thread."""

    readout: Readout
    state: ReadoutState
    spectrum: tuple[SpectrumInput, Future] | None


class Instrument:
    """Per-step readouts of one context, recorded as trajectory rows.

    ``observe(logits)`` reads Φ, signal, drag and the rest at once and starts the top-k spectrum
    (a d×d eigensolve) in a worker thread, on rows copied out of U, so the caller may run backward
    and the optimiser step meanwhile; ``record(pending, step, lr)`` waits for it and adds the row.
    """

    def __init__(self, unembedding: torch.Tensor, target_id: int, competitor_id: int, config) -> None:
        self.unembedding = unembedding
        self.target_id, self.competitor_id = target_id, competitor_id
        self.center = config.center
        self.spectral_mass, self.spectral_topk = config.spectral_mass, config.spectral_topk
        self.recorder = Recorder()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phantomlens-spectrum")

    @property
    def rows(self) -> list[dict]:
        return self.recorder.rows

    def observe(self, logits: torch.Tensor) -> Pending:
        readout, state = readout_from_logits(
            logits,
            self.unembedding,
            self.target_id,
            self.competitor_id,
            center=self.center,
            with_spectrum=False,
        )
        if self.spectral_topk == 0 or not bool(torch.isfinite(state.p).all()):
            return Pending(readout, state, None)
        inputs = spectrum_input(
            self.unembedding, state.p, self.center, self.spectral_mass, self.spectral_topk
        )
        return Pending(readout, state, (inputs, self._pool.submit(spectrum_of, inputs)))

    def record(self, pending: Pending, step: int, lr: float) -> dict:
        readout = pending.readout
        if pending.spectrum is not None:
            inputs, future = pending.spectrum
            purity, entropy = future.result()
            readout = replace(
                readout, purity=purity, entropy=entropy, topk=inputs.k, topk_mass=inputs.covered
            )
        return self.recorder.add(step, lr, readout, pending.state)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Instrument:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def finetune(
    config: RunConfig | None = None,
    *,
    model=None,
    tokenizer=None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    step_callback=None,
    analysis: AnalysisConfig | None = None,
    **overrides,
) -> RunResult:
    """Run one instrumented fine-tuning run and return its trajectory and summary.

    ``config`` fields may also be given as keyword arguments. With ``model``/``tokenizer`` given,
    that model is trained in place (LoRA mode wraps it with PEFT adapters); otherwise
    ``config.model`` is loaded. With ``out``, the run directory is written atomically.
    ``step_callback(step, row)`` is called with each step's row, after that step's update;
    returning True stops the run there (the final readout then follows, as at the end of T steps).
    """
    from tqdm.auto import tqdm

    config, model, tokenizer, spec = setup_run(config, model, tokenizer, overrides)
    torch.manual_seed(config.seed)
    model = prepare_model(model, config)
    model.eval()  # dropout off: deterministic, and the readout sees the same function it trains
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise PhantomLensError("the model has no trainable parameters in this mode")
    optimizer = make_optimizer(config, trainable)
    factors = schedule_factors(config.steps, config.schedule, config.warmup_fraction)
    unembedding = output_embedding(model)
    vocab = unembedding.shape[0]
    hash_start = embedding_sha256(model)
    instrument = Instrument(unembedding, spec.target_id, spec.competitor_id, config)
    stop_probe = None
    if config.early_stop:
        from phantomlens.probe import Probe, StopRule

        stop_probe = Probe(
            model,
            tokenizer,
            [{"name": "context", "text": spec.text, "target": spec.target, "competitor": spec.competitor}],
            StopRule(margin_safe=config.margin_safe, patience=config.patience),
        )
    stop_reason = ""
    status, reason, diverged_step, stopped_early = "completed", "", None, False
    cutoff = config.diverge_loss
    bar = tqdm(
        total=config.steps,
        desc="fine-tuning",
        unit="step",
        disable=None if progress is None else not progress,
        leave=False,
    )
    started = time.perf_counter()
    target = torch.tensor([spec.target_id], device=unembedding.device)
    with instrument:
        updates = 0
        for step in range(config.steps):
            lr = config.lr * factors[step]
            for group in optimizer.param_groups:
                group["lr"] = lr
            logits, loss = forward_loss(model, spec.input_ids, target)
            pending = instrument.observe(logits)
            loss_value = pending.readout.loss
            if cutoff is None:
                cutoff = max(2 * math.log(vocab), 2 * loss_value)
            if not math.isfinite(loss_value) or not bool(torch.isfinite(logits).all()):
                status, reason, diverged_step = "diverged", "non-finite loss or logits", step
            elif loss_value > cutoff:
                status, reason = "diverged", f"loss {loss_value:.3g} above cut-off {cutoff:.3g}"
                diverged_step = step
            else:
                update(loss, optimizer)  # overlaps with the spectrum of this step's readout
                updates += 1
            row = instrument.record(pending, step, lr)
            if status == "diverged":
                break
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", margin=f"{row['margin']:+.2f}")
            if stop_probe is not None:
                observation = stop_probe.record(step, {"context": Readout.from_dict(row)})
                if observation.should_stop:
                    stopped_early, stop_reason = True, observation.reason
                    break
            if step_callback is not None and step_callback(step, row):
                stopped_early, stop_reason = True, "step_callback asked to stop"
                break
        if status == "completed":
            with evaluation(model):
                logits = last_token_logits(model, spec.input_ids)
            row = instrument.record(instrument.observe(logits), updates, math.nan)
            if not math.isfinite(row["loss"]) or not bool(torch.isfinite(logits).all()):
                status, reason, diverged_step = "diverged", "non-finite loss or logits", updates
    bar.close()
    wall = time.perf_counter() - started
    optimizer.zero_grad(set_to_none=True)
    hash_end = embedding_sha256(model)
    trajectory = pd.DataFrame(instrument.rows)
    notes = list(spec.notes)
    if config.mode == "lora" and hash_start != hash_end:
        notes.append("WARNING: the embedding matrix changed under LoRA")
        warnings.warn("phantomlens: the embedding matrix changed under LoRA", stacklevel=2)
    summary = summarize(
        trajectory,
        config=config,
        spec=spec,
        status=status,
        reason=reason,
        diverged_step=diverged_step,
        stopped_early=stopped_early,
        hashes=(hash_start, hash_end),
        cutoff=cutoff,
        trainable=sum(p.numel() for p in trainable),
        wall=wall,
        device=unembedding.device,
        vocab=vocab,
        notes=notes,
    )
    events = analyze(trajectory, summary, analysis)
    summary.update(summary_fields(events))
    summary["stop_reason"] = stop_reason
    result = RunResult(summary=summary, trajectory=trajectory, notes=notes, events=events)
    if out is not None:
        from phantomlens.rundir import write_run

        result.out_dir = write_run(Path(out), config, result, overwrite=overwrite)
        result.summary["out_dir"] = str(result.out_dir)
    return result


def forward_loss(model, input_ids: torch.Tensor, target: torch.Tensor):
    """Next-token logits [V] (with autograd) and the cross-entropy −log p(target)."""
    logits = last_token_logits(model, input_ids)
    return logits, torch.nn.functional.cross_entropy(logits.float().unsqueeze(0), target)


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def summarize(
    trajectory: pd.DataFrame,
    *,
    config: RunConfig,
    spec: ResolvedContext,
    status: str,
    reason: str,
    diverged_step,
    stopped_early: bool,
    hashes: tuple[str, str],
    cutoff,
    trainable: int,
    wall: float,
    device,
    vocab: int,
    notes: list[str],
) -> dict:
    margins = trajectory["margin"]
    flipped_rows = trajectory.index[margins > 0]
    first, last = trajectory.iloc[0], trajectory.iloc[-1]
    finite = trajectory[trajectory["loss"].map(math.isfinite)]
    final = finite.iloc[-1] if len(finite) else last
    return {
        "status": status,
        "status_reason": reason,
        "diverged_step": diverged_step,
        "stopped_early": stopped_early,
        "flipped": bool(len(flipped_rows)),
        "flip_step": int(trajectory.loc[flipped_rows[0], "step"]) if len(flipped_rows) else None,
        "flipped_at_end": bool(status == "completed" and last["margin"] > 0),
        "steps_completed": int(len(trajectory) - 1) if status == "completed" else int(last["step"]),
        "margin_initial": float(first["margin"]),
        "margin_final": float(final["margin"]),
        "loss_initial": float(first["loss"]),
        "loss_final": float(final["loss"]),
        "p_target_final": float(final["p_target"]),
        "p_competitor_final": float(final["p_competitor"]),
        "phi_initial": float(first["phi"]),
        "phi_final": float(final["phi"]),
        "overlap_tc_initial": float(first["overlap_tc"]),
        "embedding_sha256_start": hashes[0],
        "embedding_sha256_end": hashes[1],
        "embeddings_unchanged": hashes[0] == hashes[1],
        "geometry": "centred" if config.center else "raw",
        "diverge_loss_cutoff": float(cutoff) if cutoff is not None else None,
        "context": {
            "text": spec.text,
            "target": spec.target,
            "competitor": spec.competitor,
            "target_id": spec.target_id,
            "competitor_id": spec.competitor_id,
            "n_context_tokens": int(spec.input_ids.shape[1]),
        },
        "vocab_size": vocab,
        "device": str(device),
        "trainable_parameters": trainable,
        "wall_time_s": round(wall, 2),
        "notes": notes,
        "config": config.to_dict(),
        "versions": versions(),
    }
