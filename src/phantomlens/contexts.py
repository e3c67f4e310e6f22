"""Near-synonym contexts: the built-in set, validation of user input, and the competitor rule.

A context is a text prefix, the correct next token (target, c) and a near-synonym the model ranks
above it before training (competitor, n). Both must be single tokens; words are given with their
leading space (" shame"), and one is added when the user leaves it out.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.resources import files

import torch

from phantomlens.errors import PhantomLensError
from phantomlens.facts import with_space
from phantomlens.forward import evaluation, last_token_logits, output_embedding, token_states

#: Candidates for the automatic competitor: tokens ranked above the target, at most this many.
COMPETITOR_CANDIDATES = 100


@dataclass(frozen=True)
class Context:
    """A near-synonym context: ``text`` should be continued by ``target``, not ``competitor``."""

    name: str
    text: str
    target: str
    competitor: str
    topic: str = ""
    part_of_speech: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ResolvedContext:
    """A context checked against one tokenizer: token ids ready for the model."""

    text: str
    target: str
    competitor: str
    target_id: int
    competitor_id: int
    input_ids: torch.Tensor  # [1, L]
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """What a run's summary stores of its context."""
        return {
            "text": self.text,
            "target": self.target,
            "competitor": self.competitor,
            "target_id": self.target_id,
            "competitor_id": self.competitor_id,
            "n_context_tokens": int(self.input_ids.shape[1]),
        }


@cache
def _builtin() -> tuple[Context, ...]:
    data = json.loads(files("phantomlens").joinpath("data/contexts.json").read_text())
    return tuple(Context(**entry) for entry in data["contexts"])


def builtin_contexts() -> list[Context]:
    """The built-in near-synonym contexts, valid for both built-in models."""
    return list(_builtin())


DEFAULT_CONTEXT = "shame"


def get_context(name: str) -> Context:
    for ctx in _builtin():
        if ctx.name == name:
            return ctx
    names = ", ".join(c.name for c in _builtin())
    raise PhantomLensError(f"unknown built-in context {name!r}; built-in names: {names}")


def lookup_context(name_or_text: str | None) -> Context | None:
    """The built-in context of that name (None → the default), or None for free text."""
    if name_or_text is None:
        return get_context(DEFAULT_CONTEXT)
    for ctx in _builtin():
        if ctx.name == name_or_text:
            return ctx
    return None


def single_token_id(tokenizer, word: str, role: str) -> int:
    """The id of ``word`` as one token, or a one-line error that shows how it tokenizes."""
    if not word or not word.strip():
        raise PhantomLensError(f"{role} is empty; give a word such as ' shame'")
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise PhantomLensError(
            f"{role} {word!r} is {len(ids)} tokens for this tokenizer ({pieces}); "
            f"phantomlens needs a single-token {role}: choose a word that is one token "
            "(with its leading space)"
        )
    return int(ids[0])


def resolve(
    tokenizer,
    text: str,
    target: str,
    competitor: str | None = None,
    *,
    model=None,
    warn: bool = True,
) -> ResolvedContext:
    """Validate a context for this tokenizer; pick the competitor when it is ``None``.

    Raises :class:`PhantomLensError` for an empty context, a multi-token target or competitor, or
    a competitor equal to the target. Warns (does not fail) when the competitor already ranks
    below the target, since there is then nothing to flip.
    """
    if text is None or not text.strip():
        raise PhantomLensError("context is empty; give the text that the target should continue")
    if target is None:
        raise PhantomLensError("no target given; pass --target WORD (the correct next word)")
    target = with_space(target, text)
    target_id = single_token_id(tokenizer, target, "target")
    input_ids = torch.tensor([tokenizer.encode(text)], dtype=torch.long)
    notes: list[str] = []
    if competitor is None:
        if model is None:
            raise PhantomLensError("no competitor given and no model to pick one with")
        competitor_id = pick_competitor(model, input_ids, target_id)
        competitor = tokenizer.decode([competitor_id])
        notes.append(f"competitor picked automatically: {competitor!r}")
    else:
        competitor = with_space(competitor, text)
        competitor_id = single_token_id(tokenizer, competitor, "competitor")
    if competitor_id == target_id:
        raise PhantomLensError(
            f"competitor {competitor!r} is the same token as the target; "
            "give a different near-synonym as the competitor"
        )
    resolved = ResolvedContext(text, target, competitor, target_id, competitor_id, input_ids, notes)
    if model is not None:
        logits = _logits(model, input_ids)
        if logits[competitor_id] <= logits[target_id]:
            message = (
                f"competitor {competitor!r} already ranks below target {target!r} at step 0: "
                "there is nothing to flip"
            )
            resolved.notes.append(message)
            if warn:
                warnings.warn(message, stacklevel=2)
    return resolved


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with evaluation(model):
        return last_token_logits(model, input_ids)


def pick_competitor(model, input_ids: torch.Tensor, target_id: int) -> int:
    """The documented rule: of the tokens ranked above the target (at most the top
    ``COMPETITOR_CANDIDATES``), the one whose state overlaps the target's most (largest G_ic);
    ties go to the higher-ranked token."""
    logits = _logits(model, input_ids)
    above = int((logits > logits[target_id]).sum())
    if above == 0:
        raise PhantomLensError(
            "the target is already the top prediction, so no competitor out-ranks it: nothing to flip"
        )
    candidates = torch.topk(logits, min(above, COMPETITOR_CANDIDATES)).indices
    with torch.no_grad():
        unembedding = output_embedding(model)
        states = token_states(unembedding, candidates, center=False)
        target_state = token_states(
            unembedding, torch.tensor([target_id], device=unembedding.device), center=False
        )[0]
        overlaps = states @ target_state
    best = int(torch.argmax(overlaps))  # argmax returns the first maximum: the higher rank
    return int(candidates[best])
