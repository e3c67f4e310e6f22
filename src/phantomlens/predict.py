"""Predicting the critical learning rate without training (METHOD.md §9).

Early in Adam each trainable parameter moves by about η·sign(gradient), so the margin moves per
step by η·A with A = Σ_θ (∂m/∂θ)·sign(−∂L/∂θ). With schedule shape s_t (peak 1), the flip needs
η·A·Σ_t s_t ≥ −m_0, so

    η̂_c = −m_0 / (κ · A · Σ_t s_t)

where κ absorbs what first order misses (A drifting as p moves) and is fitted on sweeps
(``phantomlens calibrate``). For SGD, A = −∇m·∇L. Cost: one forward and two backward passes.
The model, its gradients, its modes and the global RNG are left exactly as they were.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from phantomlens.atomic import read_json
from phantomlens.errors import PhantomLensError


@dataclass
class Prediction:
    """η̂_c and what it was computed from."""

    eta_c: float | None  # None when the margin does not move towards the flip at step 0 (A ≤ 0)
    margin_initial: float  # m_0 (negative: the competitor leads)
    margin_velocity: float  # A, the margin change per step per unit LR at step 0
    schedule_sum: float  # Σ_t s_t over the T steps
    kappa: float
    kappa_source: str
    passes: dict  # forward / backward passes spent
    mode: str
    optimizer: str
    steps: int
    schedule: str
    model: str
    context: dict

    def to_dict(self) -> dict:
        return asdict(self)


def margin_velocity(
    model, input_ids: torch.Tensor, target_id: int, competitor_id: int, optimizer: str
) -> tuple[float, float, float]:
    """(m_0, A, loss_0) from one forward and two backward passes on the trainable parameters."""
    from phantomlens.readout import last_token_logits

    params = [p for p in model.parameters() if p.requires_grad]
    logits = last_token_logits(model, input_ids)
    margin = logits[target_id] - logits[competitor_id]
    loss = torch.nn.functional.cross_entropy(logits.float().unsqueeze(0), torch.tensor([target_id]))
    grad_margin = torch.autograd.grad(margin, params, retain_graph=True, allow_unused=True)
    grad_loss = torch.autograd.grad(loss, params, allow_unused=True)
    velocity = 0.0
    for gm, gl in zip(grad_margin, grad_loss, strict=True):
        if gm is None or gl is None:
            continue
        if optimizer == "sgd":
            velocity -= float((gm.double() * gl.double()).sum())
        else:
            velocity += float((gm.double() * torch.sign(-gl).double()).sum())
    return float(margin.detach()), velocity, float(loss.detach())


def predict_critical_lr(
    config=None,
    *,
    model=None,
    tokenizer=None,
    kappa: float | None = None,
    calibration: str | Path | dict | None = None,
    **overrides,
) -> Prediction:
    """η̂_c for the run ``config`` would make (same settings and defaults as ``finetune``)."""
    from phantomlens.train import prepare_model, schedule_factors, setup_run

    config, model, tokenizer, spec = setup_run(config, model, tokenizer, overrides)
    kappa, source = resolve_kappa(kappa, calibration, config)
    rng = torch.get_rng_state()
    try:
        # A private copy: LoRA injection and requires_grad changes must not touch the user's model.
        probe = copy.deepcopy(model)
        for parameter in probe.parameters():
            parameter.grad = None
        torch.manual_seed(config.seed)  # the same LoRA initialisation the run would get
        probe = prepare_model(probe, config)
        probe.eval()
        with torch.enable_grad():
            m0, velocity, _ = margin_velocity(
                probe, spec.input_ids, spec.target_id, spec.competitor_id, config.optimizer
            )
        del probe
    finally:
        torch.set_rng_state(rng)
    total = sum(schedule_factors(config.steps, config.schedule, config.warmup_fraction))
    eta = -m0 / (kappa * velocity * total) if velocity > 0 and m0 < 0 else None
    if m0 >= 0:
        eta = 0.0  # already flipped: any LR keeps it (to first order)
    return Prediction(
        eta_c=eta,
        margin_initial=m0,
        margin_velocity=velocity,
        schedule_sum=total,
        kappa=kappa,
        kappa_source=source,
        passes={"forward": 1, "backward": 2},
        mode=config.mode,
        optimizer=config.optimizer,
        steps=config.steps,
        schedule=config.schedule,
        model=config.model,
        context={"text": spec.text, "target": spec.target, "competitor": spec.competitor},
    )


def resolve_kappa(kappa: float | None, calibration, config) -> tuple[float, str]:
    """κ given directly, from a calibration file (per mode and optimiser), or 1 (uncalibrated)."""
    if kappa is not None:
        if not (math.isfinite(kappa) and kappa > 0):
            raise PhantomLensError(f"kappa must be a positive number, got {kappa}")
        return float(kappa), "given"
    if calibration is None:
        return 1.0, "uncalibrated (κ = 1)"
    if isinstance(calibration, dict):
        data, where = calibration, "calibration dict"
    else:
        path = Path(calibration)
        data = read_json(path, "calibration file", "make one with phantomlens calibrate")
        where = str(path)
    key = f"{config.mode}/{config.optimizer}"
    entry = data.get("kappa", {}).get(key)
    if entry is None:
        raise PhantomLensError(
            f"{where} has no κ for {key}; it has {', '.join(data.get('kappa', {})) or 'none'}"
        )
    return float(entry["value"]), f"{where} [{key}]"
