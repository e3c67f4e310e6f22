"""Rebuild the built-in context set from tools/context_candidates.json.

A candidate is kept when, for every built-in model, both words are single tokens and one of them
out-ranks the other at step 0, in the same order for all models; the lower-ranked word becomes the
target (the word fine-tuning must promote), the other the competitor.

    python -m tools.screen_contexts            # writes src/phantomlens/data/contexts.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from phantomlens.atomic import write_json_atomic
from phantomlens.contexts import _with_space, single_token_id
from phantomlens.errors import PhantomLensError
from phantomlens.forward import evaluation, last_token_logits
from phantomlens.models import BUILTIN_MODELS, load_model

ROOT = Path(__file__).resolve().parents[1]


def single_id(tokenizer, word: str) -> int | None:
    """The word's token id under the library's single-token rule, or None where it is not one token."""
    try:
        return single_token_id(tokenizer, word, "word")
    except PhantomLensError:
        return None


def main() -> int:
    candidates = json.loads((ROOT / "tools" / "context_candidates.json").read_text())
    order: dict[int, list[str | None]] = {i: [] for i in range(len(candidates))}
    for model_name in BUILTIN_MODELS:
        model, tokenizer = load_model(model_name)
        for i, (text, word_a, word_b, _topic, _pos) in enumerate(candidates):
            a, b = _with_space(word_a, text), _with_space(word_b, text)
            id_a, id_b = single_id(tokenizer, a), single_id(tokenizer, b)
            if id_a is None or id_b is None or id_a == id_b:
                order[i].append(None)
                continue
            ids = torch.tensor([tokenizer.encode(text)])
            with evaluation(model):
                logits = last_token_logits(model, ids)
            # The lower-ranked word is the target that fine-tuning must promote.
            order[i].append("a" if logits[id_a] < logits[id_b] else "b")
        del model
    kept, names = [], set()
    for i, (text, word_a, word_b, topic, pos) in enumerate(candidates):
        verdicts = order[i]
        if None in verdicts or len(set(verdicts)) != 1:
            continue
        target, competitor = (word_a, word_b) if verdicts[0] == "a" else (word_b, word_a)
        name = target
        suffix = 2
        while name in names:
            name, suffix = f"{target}-{suffix}", suffix + 1
        names.add(name)
        kept.append(
            {
                "name": name,
                "text": text,
                "target": " " + target,
                "competitor": " " + competitor,
                "topic": topic,
                "part_of_speech": pos,
            }
        )
    out = ROOT / "src" / "phantomlens" / "data" / "contexts.json"
    write_json_atomic(
        out,
        {
            "about": "Built-in near-synonym contexts; regenerate with `python -m tools.screen_contexts`. "
            "Valid for every built-in model: single-token words, competitor ranked above target.",
            "models": list(BUILTIN_MODELS),
            "contexts": kept,
        },
    )
    print(f"kept {len(kept)} of {len(candidates)} candidates -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
