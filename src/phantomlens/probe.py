"""Early stopping at the flip (docs/early-stopping.md): a plain-loop ``Probe`` and a Hugging Face callback.

Rule: stop at the first step where every watched context has flipped with margin ≥ ``margin_safe``
for ``patience`` consecutive observations. The flip comes before the loss stops improving, so
stopping on it instead of on a loss plateau saves steps without losing the answer.

The probe measures with its own no-grad forward pass in eval mode and restores every module's
mode; it draws no random numbers, so training with a probe that never stops is bit-identical to
training without one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from phantomlens.contexts import Context, ResolvedContext, lookup_context, resolve
from phantomlens.errors import PhantomLensError
from phantomlens.readout import Readout, evaluation, last_token_logits, output_embedding, readout_from_logits
from phantomlens.settings import StopRule

logger = logging.getLogger("phantomlens")


@dataclass
class Observation:
    step: int
    readouts: dict[str, Readout]
    secure_steps: int  # consecutive observations with every margin ≥ margin_safe
    should_stop: bool
    reason: str = ""

    def scalars(self, prefix: str = "phantom") -> dict[str, float]:
        """Namespaced scalars for a logger: ``phantom/<context>/<quantity>``."""
        out: dict[str, float] = {}
        for name, r in self.readouts.items():
            for key in ("margin", "p_target", "p_competitor", "phi", "signal", "drag", "loss"):
                out[f"{prefix}/{name}/{key}"] = float(getattr(r, key))
            out[f"{prefix}/{name}/rank_target"] = float(r.rank_target)
            out[f"{prefix}/{name}/flipped"] = float(r.margin > 0)
        out[f"{prefix}/all_flipped"] = float(all(r.margin > 0 for r in self.readouts.values()))
        out[f"{prefix}/secure_steps"] = float(self.secure_steps)
        return out


def _as_context(item) -> tuple[str, str, str, str | None]:
    """(name, text, target, competitor) from a built-in name, a Context, a dict or a tuple."""
    if isinstance(item, Context):
        return item.name, item.text, item.target, item.competitor
    if isinstance(item, str):
        builtin = lookup_context(item)
        if builtin is None:
            raise PhantomLensError(f"{item!r} is not a built-in context; pass (text, target, competitor)")
        return builtin.name, builtin.text, builtin.target, builtin.competitor
    if isinstance(item, dict):
        text = item["text"]
        return item.get("name") or text, text, item["target"], item.get("competitor")
    text, target, *rest = item
    return text, text, target, rest[0] if rest else None


def context_specs(contexts) -> list[dict]:
    """JSON-ready context descriptions (for configs and for resuming)."""
    specs = []
    for item in contexts:
        name, text, target, competitor = _as_context(item)
        specs.append({"name": name, "text": text, "target": target, "competitor": competitor})
    if not specs:
        raise PhantomLensError("give at least one context to watch")
    return specs


class Probe:
    """Watch one or more contexts in any training loop; ``observe(step)`` says when to stop.

    ``contexts``: built-in names, ``Context`` objects, dicts or (text, target, competitor) tuples.
    """

    def __init__(self, model, tokenizer, contexts, rule: StopRule | None = None, *, center: bool = False):
        self.model = model
        self.rule = rule or StopRule()
        self.center = center
        self.specs = context_specs(contexts)
        self.resolved: dict[str, ResolvedContext] = {
            s["name"]: resolve(tokenizer, s["text"], s["target"], s["competitor"], model=model)
            for s in self.specs
        }
        self.secure_steps = 0
        self.history: list[Observation] = []

    def observe(self, step: int | None = None) -> Observation:
        """Measure every context now (one no-grad forward each) and apply the rule."""
        readouts = {}
        with evaluation(self.model):
            unembedding = output_embedding(self.model)
            for name, spec in self.resolved.items():
                logits = last_token_logits(self.model, spec.input_ids)
                readouts[name], _ = readout_from_logits(
                    logits,
                    unembedding,
                    spec.target_id,
                    spec.competitor_id,
                    center=self.center,
                    with_spectrum=False,
                )
        return self.record(len(self.history) if step is None else step, readouts)

    def record(self, step: int, readouts: dict[str, Readout]) -> Observation:
        """Apply the rule to readouts measured elsewhere (the runner reuses its training logits)."""
        self.secure_steps = self.rule.next_streak(self.secure_steps, [r.margin for r in readouts.values()])
        stop = self.secure_steps >= self.rule.patience
        reason = ""
        if stop:
            worst = min(readouts.items(), key=lambda kv: kv[1].margin)
            reason = (
                f"flip secure at step {step}: every context kept margin ≥ {self.rule.margin_safe} "
                f"for {self.rule.patience} consecutive observations "
                f"(smallest now: {worst[0]} {worst[1].margin:+.2f})"
            )
        observation = Observation(step, readouts, self.secure_steps, stop, reason)
        self.history.append(observation)
        return observation

    def state_dict(self) -> dict:
        return {"secure_steps": self.secure_steps, "rule": self.rule.to_dict(), "contexts": self.specs}

    def load_state_dict(self, state: dict) -> None:
        self.secure_steps = int(state["secure_steps"])


def _trainer_callback_base():
    try:
        from transformers import TrainerCallback
    except ImportError:  # pragma: no cover - transformers is a dependency
        return object
    return TrainerCallback


@dataclass
class _Pending:
    step: int
    scalars: dict[str, float] = field(default_factory=dict)


class PhantomCallback(_trainer_callback_base()):
    """Hugging Face ``TrainerCallback``: log the readout, stop when the flip is secure.

    Scalars go through the Trainer's own logging as ``phantom/<context>/<quantity>``, so every
    ``report_to`` integration receives them when the callback runs before the integrations:
    ``PhantomCallback.attach(trainer, contexts)`` puts it there. It needs no evaluation loop, works
    with PEFT models, and resumes from a checkpoint by reading its counter back from the
    restored ``log_history``.
    """

    def __init__(
        self,
        contexts,
        tokenizer=None,
        *,
        rule: StopRule | None = None,
        every: int = 1,
        prefix: str = "phantom",
        stop: bool = True,
        center: bool = False,
    ):
        self.contexts = context_specs(contexts)
        self.tokenizer = tokenizer
        self.rule = rule or StopRule()
        if every < 1:
            raise PhantomLensError(f"every must be at least 1, got {every}")
        self.every, self.prefix, self.stop, self.center = every, prefix, stop, center
        self.probe: Probe | None = None
        self.stop_reason = ""
        self._pending: _Pending | None = None

    @classmethod
    def attach(cls, trainer, contexts, **kwargs) -> PhantomCallback:
        """Create the callback and put it first, ahead of the reporting integrations."""
        callback = cls(contexts, kwargs.pop("tokenizer", None) or trainer.processing_class, **kwargs)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        tokenizer = self.tokenizer or processing_class
        if tokenizer is None:
            raise PhantomLensError(
                "PhantomCallback needs a tokenizer: pass it, or give the Trainer processing_class"
            )
        self.probe = Probe(model, tokenizer, self.contexts, self.rule, center=self.center)
        key = f"{self.prefix}/secure_steps"
        logged = [entry[key] for entry in state.log_history if key in entry]
        if state.global_step > 0 and logged:
            self.probe.secure_steps = int(logged[-1])  # resumed from a checkpoint

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.probe is None or state.global_step % self.every:
            return control
        observation = self.probe.observe(state.global_step)
        scalars = observation.scalars(self.prefix)
        if observation.should_stop and self.stop:
            control.should_training_stop = True
            self.stop_reason = observation.reason
            scalars[f"{self.prefix}/stopped"] = 1.0
            logger.warning("phantomlens: stopping training: %s", observation.reason)
        self._pending = _Pending(state.global_step, scalars)
        control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._pending is None or logs is None:
            return control
        logs.update(self._pending.scalars)
        if state.log_history and state.log_history[-1].get("step") == self._pending.step:
            state.log_history[-1].update(self._pending.scalars)  # so a checkpoint carries them
        self._pending = None
        return control


def loss_plateau_step(losses: list[float], min_delta: float = 0.0, patience: int = 3) -> int | None:
    """Index of the observation at which loss-plateau early stopping stops, or None if it never does.

    The baseline the flip rule is measured against: the semantics of the Keras and Hugging Face
    ``EarlyStopping`` callbacks, on the training loss. An observation improves when its loss is
    below the best so far by more than ``min_delta``; training stops once ``patience``
    consecutive observations have not improved (a NaN loss never improves).
    """
    if patience < 1:
        raise PhantomLensError(f"patience must be at least 1, got {patience}")
    best, waited = float("inf"), 0
    for t, loss in enumerate(losses):
        if loss < best - min_delta:
            best, waited = loss, 0
            continue
        waited += 1
        if waited >= patience:
            return t
    return None
