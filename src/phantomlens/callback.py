"""phantomlens inside a Hugging Face ``Trainer`` (and TRL's ``SFTTrainer``): ``PhantomCallback``.

Pass it as ``Trainer(callbacks=[PhantomCallback(facts)])``. At every step it measures each watched
fact (one batched no-grad pass in fp32, whatever the Trainer's mixed precision), applies the stop rule
(docs/early-stopping.md), and hands its scalars to the Trainer's own logging at the Trainer's
``logging_steps``, so every ``report_to`` integration receives them. At the end of training it gives
each fact its verdict (flipped, silent failure, kinematic, structural, diverged), warns about silent
failures, and exports the observed trajectory as a fact-set run directory that ``phantomlens
analyze`` and ``phantomlens report`` read.

Watched items are the probe's (built-in context names, (text, target, competitor) tuples, dicts,
``Fact`` objects); each is recorded as a fact, so a single-token context is a one-token fact.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

from phantomlens.errors import PhantomLensError
from phantomlens.probe import FactProbe, Observation, context_specs
from phantomlens.settings import AnalysisConfig, StopRule

logger = logging.getLogger("phantomlens")


def _trainer_callback_bases() -> tuple[type, ...]:
    from transformers.trainer_callback import ExportableState, TrainerCallback

    return TrainerCallback, ExportableState


class PhantomCallback(*_trainer_callback_bases()):
    """Hugging Face ``TrainerCallback``: log the readout, stop when the flip is secure, give verdicts.

    ``contexts``: what to watch (see ``Probe``). ``tokenizer``: defaults to the Trainer's
    ``processing_class``. ``every``: observe every n-th step (the stop rule counts observations).
    ``stop``: end training once the flip is secure (and when the watched losses become non-finite).
    ``out``: the run directory written at the end (default ``<output_dir>/phantomlens``);
    ``export=False`` writes none. ``predict``: before the first step, predict each fact's critical
    LR for the Trainer's own schedule and step budget (``predictions``), and warn about the facts
    the Trainer's learning rate is predicted not to flip. After training, ``result`` is the
    ``FactSetResult`` and ``verdicts`` its per-fact table.
    """

    def __init__(
        self,
        contexts,
        tokenizer=None,
        *,
        rule: StopRule | dict | None = None,
        every: int = 1,
        prefix: str = "phantom",
        stop: bool = True,
        center: bool = False,
        micro_batch: int = 32,
        out: str | None = None,
        export: bool = True,
        predict: bool = False,
        quantities: list[str] | None = None,
    ):
        self.contexts = context_specs(contexts)
        self.tokenizer = tokenizer
        self.rule = StopRule.from_dict(rule) if isinstance(rule, dict) else rule or StopRule()
        if not isinstance(self.rule, StopRule):
            raise PhantomLensError(f"rule must be a StopRule (or its dict), got {type(rule).__name__}")
        for name, value in (("every", every), ("micro_batch", micro_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PhantomLensError(f"{name} must be a whole number ≥ 1, got {value!r}")
        self.every, self.prefix, self.stop, self.center = every, prefix, stop, center
        self.micro_batch, self.out, self.export, self.predict = micro_batch, out, export, predict
        self.predictions: list | None = None
        self.quantities = None if quantities is None else list(quantities)
        if self.quantities is not None:
            from phantomlens.probe import FACT_KEYS, QUANTITIES

            unknown = sorted(set(self.quantities) - {*QUANTITIES, *FACT_KEYS})
            if unknown:
                raise PhantomLensError(
                    f"unknown quantities {unknown}; choose from {', '.join([*QUANTITIES, *FACT_KEYS])}"
                )
        self.secure_steps = 0
        self.stop_reason = ""
        self.recorder: FactProbe | None = None
        self.observed_step: int | None = None
        self.history: list[Observation] = []
        self.result = None
        self.verdicts = None
        self._pending: dict[str, float] | None = None
        self._run: dict[str, Any] = {}

    # -- Hugging Face conventions ------------------------------------------------------------------

    @classmethod
    def attach(cls, trainer, contexts, **kwargs) -> PhantomCallback:
        """Create the callback and add it to ``trainer`` (the same as passing it in ``callbacks``)."""
        callback = cls(contexts, kwargs.pop("tokenizer", None) or trainer.processing_class, **kwargs)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    def state(self) -> dict:
        """``ExportableState``: what a checkpoint needs to rebuild this callback (JSON only)."""
        return {
            "args": {
                "contexts": self.contexts,
                "rule": self.rule.to_dict(),
                "every": self.every,
                "prefix": self.prefix,
                "stop": self.stop,
                "center": self.center,
                "micro_batch": self.micro_batch,
                "out": self.out,
                "export": self.export,
                "predict": self.predict,
                "quantities": self.quantities,
            },
            "attributes": {"secure_steps": self.secure_steps, "stop_reason": self.stop_reason},
        }

    def _move_first(self) -> None:
        """Run before the reporting integrations, so that the scalars this callback adds to a log
        reach all of them: the Trainer puts callbacks given in ``callbacks=[...]`` after its
        ``report_to`` integrations, and an integration sends a log when its own ``on_log`` runs."""
        from transformers.trainer_callback import CallbackHandler

        frame = inspect.currentframe()
        try:
            while frame is not None:
                handler = frame.f_locals.get("self")
                if isinstance(handler, CallbackHandler) and self in handler.callbacks:
                    # Safe inside the handler's own loop over its list: the callbacks before this
                    # one have had the event, the ones after it keep their order.
                    handler.callbacks.remove(self)
                    handler.callbacks.insert(0, self)
                    return
                frame = frame.f_back
        finally:
            del frame
        logger.warning(
            "phantomlens: could not place PhantomCallback ahead of the Trainer's reporting "
            "integrations; use PhantomCallback.attach(trainer, ...) if its scalars are missing there"
        )

    def on_init_end(self, args, state, control, **kwargs):
        self._move_first()
        return control

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._move_first()
        from phantomlens.callbackrun import begin

        if state.global_step == 0:  # a fresh training, also for a callback used before
            self._reset()
        tokenizer = self.tokenizer or processing_class
        if tokenizer is None:
            raise PhantomLensError(
                "PhantomCallback needs a tokenizer: pass PhantomCallback(..., tokenizer=tok) or give "
                "the Trainer processing_class=tok"
            )
        self.recorder, self._run = begin(self, args, state, model, tokenizer)
        if self.predict and state.global_step == 0:
            from phantomlens.callbackrun import predict_in_trainer

            self.predictions = predict_in_trainer(self, args, state, kwargs.get("lr_scheduler"))
        self._observe(args, state, control, kwargs.get("lr_scheduler"))
        return control

    def _reset(self) -> None:
        self.secure_steps, self.stop_reason, self.observed_step = 0, "", None
        self.history, self.result, self.verdicts, self.predictions = [], None, None, None
        self._pending = None

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        if self.recorder is None or state.global_step % self.every:
            return control
        return self._observe(args, state, control, lr_scheduler)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self.recorder is None:
            return control
        if "train_runtime" in logs:  # the Trainer's closing log: add the verdict's scalars to it
            self._finish(args, state)
            logs.update(self._closing_scalars())
            return control
        if self._pending is None or any(key.startswith("eval_") for key in logs):
            return control
        logs.update(self._pending)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(self._pending)  # so a checkpoint carries them
        self._pending = None
        return control

    def on_save(self, args, state, control, **kwargs):
        from phantomlens.callbackrun import save_checkpoint_trajectory

        if self.recorder is not None and state.is_world_process_zero:
            save_checkpoint_trajectory(self, args, state)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self._finish(args, state)
        return control

    # -- measuring -------------------------------------------------------------------------------------

    def _observe(self, args, state, control, lr_scheduler):
        from phantomlens.forward import evaluation

        step = state.global_step
        if self.observed_step == step:
            return control  # already measured (the first step of a resumed run)
        lr = float(lr_scheduler.get_last_lr()[0]) if lr_scheduler is not None else math.nan
        with evaluation(self.recorder.model):
            readouts = self.recorder.measure(step, lr)
        self.observed_step = step
        margins = [r.margin for r in readouts.values()]
        self.secure_steps = self.rule.next_streak(self.secure_steps, margins)
        secure = self.secure_steps >= self.rule.patience
        finite = all(math.isfinite(r.loss) and math.isfinite(r.margin) for r in readouts.values())
        finite = finite and not self._above_cutoff(readouts)
        reason = self._stop_reason(step, readouts, secure, finite)
        observation = Observation(step, readouts, self.secure_steps, bool(reason), reason)
        self.history.append(observation)
        self._pending = observation.scalars(self.prefix, self.quantities)
        if not finite and not self._run.get("diverged_step"):
            self._run["diverged_step"] = step
        if reason and self.stop and step > 0:
            control.should_training_stop = True
            self.stop_reason = reason
            self._pending[f"{self.prefix}/stopped"] = 1.0
            control.should_log = True  # the step that stops is logged whatever logging_steps says
            logger.warning("phantomlens: stopping training: %s", reason)
        return control

    def _above_cutoff(self, readouts: dict) -> bool:
        """The divergence cut-off of phantomlens runs (``loop.check_divergence``) on the watched
        facts' mean loss: max(2 ln V, 2 × its first value)."""
        from phantomlens.loop import Outcome, check_divergence

        mean = sum(r.loss for r in readouts.values()) / len(readouts)
        outcome = Outcome(cutoff=self._run.get("cutoff"))
        diverged = check_divergence(outcome, 0, mean, True, self._run["vocab_size"])
        self._run["cutoff"] = outcome.cutoff
        return diverged and math.isfinite(mean)

    def _stop_reason(self, step: int, readouts: dict, secure: bool, finite: bool) -> str:
        if not finite:
            cutoff = self._run.get("cutoff")
            return (
                f"diverged at step {step}: a watched loss or margin is not finite, or their mean loss "
                f"is above the cut-off {cutoff:.3g} (2 ln V, or twice the first)"
            )
        if not secure:
            return ""
        worst = min(readouts.items(), key=lambda kv: kv[1].margin)
        return (
            f"flip secure at step {step}: every watched fact kept margin ≥ {self.rule.margin_safe} for "
            f"{self.rule.patience} consecutive observations (smallest now: {worst[0]} {worst[1].margin:+.2f})"
            + self.rule.caveat
        )

    # -- the end ---------------------------------------------------------------------------------------

    def _finish(self, args, state) -> None:
        from phantomlens.callbackrun import finish

        if self.result is not None:
            return
        if self.observed_step != state.global_step:  # every > 1: see the final model too
            from transformers import TrainerControl

            self._observe(args, state, TrainerControl(), None)
        self.result = finish(self, args, state, AnalysisConfig())
        self.verdicts = self.result.table()

    def _closing_scalars(self) -> dict[str, float]:
        summary = self.result.summary
        return {
            f"{self.prefix}/fraction_flipped": float(summary.fraction_flipped),
            f"{self.prefix}/n_flipped": float(summary.n_flipped),
            f"{self.prefix}/n_silent_failures": float(len(summary.silent_failures)),
        }
