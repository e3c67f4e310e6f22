"""Early stopping at the flip (docs/early-stopping.md): a ``Probe`` for any training loop.

The Hugging Face ``TrainerCallback`` built on it is ``phantomlens.callback.PhantomCallback``.

Rule: stop at the first step where every watched context has flipped with margin ≥ ``margin_safe``
for ``patience`` consecutive observations. The flip comes before the loss stops improving, so
stopping on it instead of on a loss plateau saves steps without losing the answer.

Watched items are single-token contexts or facts (docs/method.md, "Facts of several tokens"). A
fact's margin is the sequence margin ℓ(target|x) − ℓ(competitor|x) and its readout is taken at the
branch position; all facts are measured together in one batched teacher-forced pass, so watching
a hundred facts costs one forward over a batch, not a hundred.

The probe measures with its own no-grad forward pass in eval mode and restores every module's
mode; it draws no random numbers, so training with a probe that never stops is bit-identical to
training without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from phantomlens.contexts import Context, ResolvedContext, lookup_context, resolve
from phantomlens.errors import PhantomLensError
from phantomlens.factreadout import COLUMNS, FactReadout
from phantomlens.facts import Fact, TokenizedFact, several_tokens, tokenize_fact
from phantomlens.factset import FactBatch, forward_chunk
from phantomlens.readout import Readout, evaluation, last_token_logits, output_embedding, readout_from_logits
from phantomlens.settings import ReadoutConfig, StopRule

#: Scalars every watched item logs, in order.
QUANTITIES = ("margin", "p_target", "p_competitor", "phi", "signal", "drag", "loss", "rank_target", "flipped")
#: Scalars a fact logs on top of a context's: its sequence terms and the branch-position margin.
FACT_KEYS = ("logp_target", "logp_competitor", "margin_branch", "loss_branch")


@dataclass(frozen=True)
class BranchReadout(Readout):
    """A fact's readout: Φ, signal, drag, p_target, ranks… at the branch position k*, while
    ``margin`` is the sequence margin ℓ(target|x) − ℓ(competitor|x) and ``loss`` the mean
    cross-entropy over the target's tokens (what training on the fact minimises)."""

    logp_target: float  # ℓ(target | x), teacher-forced
    logp_competitor: float  # ℓ(competitor | x)
    margin_branch: float  # z_c − z_n at the branch position
    loss_branch: float  # −log p(c) at the branch position


@dataclass
class Observation:
    step: int
    readouts: dict[str, Readout]
    secure_steps: int  # consecutive observations with every margin ≥ margin_safe
    should_stop: bool
    reason: str = ""

    def scalars(self, prefix: str = "phantom", quantities: list[str] | None = None) -> dict[str, float]:
        """Namespaced scalars for a logger: ``phantom/<context or fact>/<quantity>`` (every quantity,
        or only ``quantities``), then the set's ``all_flipped`` and ``secure_steps``."""
        out: dict[str, float] = {}
        for name, r in self.readouts.items():
            keys = [*QUANTITIES, *(FACT_KEYS if isinstance(r, BranchReadout) else ())]
            for key in keys if quantities is None else [k for k in keys if k in quantities]:
                value = r.margin > 0 if key == "flipped" else getattr(r, key)
                out[f"{prefix}/{name}/{key}"] = float(value)
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


def _as_fact(item) -> Fact | None:
    """The item as a Fact when it is given as one (a Fact, or a dict with a ``prompt``)."""
    if isinstance(item, Fact):
        return item
    if isinstance(item, dict) and "prompt" in item:
        return Fact(
            prompt=item["prompt"],
            target=item["target"],
            competitor=item.get("competitor") or "",
            name=item.get("name") or "",
            chat=item.get("chat", False),
        )
    return None


def context_specs(contexts) -> list[dict]:
    """JSON-ready descriptions of the watched items (for configs and for resuming): a context as
    name/text/target/competitor, a fact as name/prompt/target/competitor/chat."""
    if isinstance(contexts, str | Context | Fact | dict):
        contexts = [contexts]  # one item given alone
    if not isinstance(contexts, list | tuple):
        raise PhantomLensError(
            f"contexts must be a list of watched items, got {type(contexts).__name__}; see help(Probe)"
        )
    specs = []
    for number, item in enumerate(contexts, start=1):
        try:
            fact = _as_fact(item)
            if fact is not None:
                specs.append({"name": fact.label, **{k: v for k, v in fact.to_dict().items() if k != "name"}})
                continue
            name, text, target, competitor = _as_context(item)
        except (TypeError, ValueError, KeyError) as exc:
            raise PhantomLensError(
                f"watched item {number} ({type(item).__name__}) is not a built-in context name, a "
                "(text, target, competitor) tuple, a dict with text/target or prompt/target, or a Fact "
                f"({type(exc).__name__}: {exc})"
            ) from None
        specs.append({"name": name, "text": text, "target": target, "competitor": competitor})
    if not specs:
        raise PhantomLensError("give at least one context to watch")
    return specs


def _spec_fact(tokenizer, spec: dict) -> Fact | None:
    """The spec as a fact: a fact spec, or a context whose target or competitor is several tokens
    (one-token contexts return None and keep the single-context path and its outputs)."""
    if "prompt" in spec:
        return _as_fact(spec)
    text, words = spec["text"], (spec["target"], spec["competitor"])
    if not several_tokens(tokenizer, text, *words) or not (text or "").strip():
        return None  # resolve() gives today's errors for empty or missing words
    return Fact(text, spec["target"], spec["competitor"] or "", spec["name"])


class FactProbe:
    """The facts a probe watches, measured together in one batched no-grad pass.

    Reuses the fact-set run's own batch (``FactBatch``/``forward_chunk``) and readout
    (``FactReadout``), so a fact means the same in a probe as in ``phantomlens run --facts``.
    With ``keep``, every measurement stays on the device (one [N, F] row block per observation)
    and ``frame()`` returns the trajectory, with the ΔΦ decomposition between observations; the
    spectrum (purity, entropy) is skipped, as for contexts: the probe needs margins and Φ.
    """

    def __init__(
        self, model, tokenized: list[TokenizedFact], *, center: bool, micro_batch: int, keep: bool = False
    ) -> None:
        if micro_batch < 1:
            raise PhantomLensError(f"micro_batch must be at least 1, got {micro_batch}")
        self.model = model
        self.tokenized = tokenized
        self.names = [t.fact.label for t in tokenized]
        self.config = ReadoutConfig(center=center, spectral_topk=0)
        self.micro_batch = micro_batch
        self.keep = keep
        self._batch: FactBatch | None = None
        self._readout: FactReadout | None = None

    def _tools(self) -> tuple[FactBatch, FactReadout]:
        """The batch and the readout, rebuilt only if the model moved or its head was replaced."""
        unembedding = output_embedding(self.model)
        if (
            self._readout is None
            or self._readout.unembedding is not unembedding
            or self._batch.device != unembedding.device
        ):
            old = self._readout
            self._batch = FactBatch(self.tokenized, unembedding.device, self.micro_batch)
            self._readout = FactReadout(
                unembedding, self._batch.target_ids, self._batch.competitor_ids, self.config
            )
            if old is not None and self.keep:  # the trajectory so far survives a moved model
                new = self._readout
                new.values = [v.to(unembedding.device) for v in old.values]
                new.steps, new.lrs = old.steps, old.lrs
        return self._batch, self._readout

    def measure(self, step: int = 0, lr: float = math.nan) -> dict[str, BranchReadout]:
        """Every fact's readout; the caller holds ``evaluation(model)`` (eval mode, no grad)."""
        batch, readout = self._tools()
        # Mixed precision (a Trainer with bf16/fp16) must not reach the readout: autocast off, so a
        # model with fp32 weights is measured in fp32; bf16 weights give logits upcast to fp64.
        with torch.autocast(batch.device.type, enabled=False):
            outputs = [forward_chunk(self.model, chunk) for chunk in batch.chunks]
        sequence = {
            key: torch.cat([getattr(o, key) for o in outputs]).double()
            for key in ("loss", "logp_target", "logp_competitor")
        }
        readout.record(step, lr, torch.cat([o.branch_logits for o in outputs]), sequence)
        values = readout.values[-1].tolist()  # the one host read: [N, F] for every fact at once
        if not self.keep:  # a probe that keeps no trajectory keeps flat memory however long it runs
            for kept in (readout.values, readout.grams, readout.steps, readout.lrs, readout.history):
                kept.clear()
        geometry = "centred" if self.config.center else "raw"
        return {
            name: _branch_readout(dict(zip(COLUMNS, row, strict=True)), geometry)
            for name, row in zip(self.names, values, strict=True)
        }

    def frame(self):
        """The kept trajectory: one row per observation per fact (``FactReadout.frame``)."""
        if self._readout is None or not self._readout.values:
            raise PhantomLensError("nothing was measured yet")
        return self._readout.frame(self.names)


def _branch_readout(row: dict[str, float], geometry: str) -> BranchReadout:
    """A fact's row of ``FactReadout`` columns as a readout; no spectrum, as for a probed context."""
    ints = {"rank_target": int(row["rank_target"]), "rank_competitor": int(row["rank_competitor"]), "topk": 0}
    spectrum = {"purity": math.nan, "entropy": math.nan, "topk_mass": math.nan}
    return BranchReadout.from_dict({**row, **ints, **spectrum, "geometry": geometry})


class Probe:
    """Watch contexts and facts in any training loop; ``observe(step)`` says when to stop.

    ``contexts``: built-in names, ``Context`` objects, dicts or (text, target, competitor) tuples,
    and ``phantomlens.facts.Fact`` objects or dicts with prompt/target/competitor/name/chat. A
    context whose target or competitor is several tokens is watched as a fact.
    """

    def __init__(
        self,
        model,
        tokenizer,
        contexts,
        rule: StopRule | None = None,
        *,
        center: bool = False,
        micro_batch: int = 32,
    ):
        self.model = model
        self.rule = rule or StopRule()
        self.center = center
        self.specs = context_specs(contexts)
        as_facts = [(spec, _spec_fact(tokenizer, spec)) for spec in self.specs]
        self.resolved: dict[str, ResolvedContext] = {
            s["name"]: resolve(tokenizer, s["text"], s["target"], s["competitor"], model=model)
            for s, fact in as_facts
            if fact is None
        }
        facts = [tokenize_fact(tokenizer, fact) for _, fact in as_facts if fact is not None]
        self.facts = FactProbe(model, facts, center=center, micro_batch=micro_batch) if facts else None
        self._check_names()
        self.secure_steps = 0
        self.history: list[Observation] = []

    def _check_names(self) -> None:
        """A fact's scalars are keyed by its name, so it must not share one with anything watched."""
        if self.facts is None:
            return  # contexts keep today's behaviour (a repeated context is watched once)
        names = self.facts.names + list(self.resolved)
        repeated = sorted({name for name in self.facts.names if names.count(name) > 1})
        if repeated:
            raise PhantomLensError(
                f"two watched items are named {repeated[0]!r}; give each fact a unique name"
            )

    def observe(self, step: int | None = None) -> Observation:
        """Measure every context (one no-grad forward each) and every fact (one batched no-grad
        pass for all of them), then apply the rule."""
        readouts: dict[str, Readout] = {}
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
            if self.facts is not None:
                readouts.update(self.facts.measure())
                readouts = {s["name"]: readouts[s["name"]] for s in self.specs}  # the order watched
        return self.record(len(self.history) if step is None else step, readouts)

    def record(self, step: int, readouts: dict[str, Readout]) -> Observation:
        """Apply the rule to readouts measured elsewhere (the runner reuses its training logits)."""
        self.secure_steps = self.rule.next_streak(self.secure_steps, [r.margin for r in readouts.values()])
        stop = self.secure_steps >= self.rule.patience
        reason = ""
        if stop:
            worst = min(readouts.items(), key=lambda kv: kv[1].margin)
            watched = "context" if self.facts is None else "watched context and fact"
            reason = (
                f"flip secure at step {step}: every {watched} kept margin ≥ {self.rule.margin_safe} "
                f"for {self.rule.patience} consecutive observations "
                f"(smallest now: {worst[0]} {worst[1].margin:+.2f}){self.rule.caveat}"
            )
        observation = Observation(step, readouts, self.secure_steps, stop, reason)
        self.history.append(observation)
        return observation

    def state_dict(self) -> dict:
        return {"secure_steps": self.secure_steps, "rule": self.rule.to_dict(), "contexts": self.specs}

    def load_state_dict(self, state: dict) -> None:
        self.secure_steps = int(state["secure_steps"])


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
