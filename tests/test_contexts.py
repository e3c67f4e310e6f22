"""Context validation, the built-in set, and the automatic competitor rule."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny

from phantomlens.contexts import (
    builtin_contexts,
    get_context,
    pick_competitor,
    resolve,
)
from phantomlens.errors import PhantomLensError
from phantomlens.readout import evaluation, last_token_logits, output_embedding


def test_builtin_set_is_large_varied_and_well_formed():
    contexts = builtin_contexts()
    assert len(contexts) >= 20
    assert len({c.name for c in contexts}) == len(contexts)
    assert len({c.part_of_speech for c in contexts}) >= 3
    assert len({c.topic for c in contexts}) >= 10
    for c in contexts:
        assert c.text.strip() and c.text == c.text.rstrip()
        assert c.target.startswith(" ") and c.competitor.startswith(" ")
        assert c.target != c.competitor
    assert get_context("shame").competitor == " guilt"
    with pytest.raises(PhantomLensError, match="unknown built-in context"):
        get_context("nope")


def test_multi_token_target_says_how_it_tokenizes(llama):
    _model, tokenizer = llama
    with pytest.raises(PhantomLensError) as info:
        resolve(tokenizer, "She felt a deep sense of", " remorsefulness", " guilt")
    message = str(info.value)
    assert "tokens for this tokenizer" in message and "single-token target" in message
    assert "\n" not in message
    with pytest.raises(PhantomLensError, match="competitor"):
        resolve(tokenizer, "She felt a deep sense of", " shame", " remorsefulness")


def test_target_equal_to_competitor_and_empty_inputs(llama):
    _model, tokenizer = llama
    with pytest.raises(PhantomLensError, match="same token as the target"):
        resolve(tokenizer, "She felt a deep sense of", " shame", "shame")
    with pytest.raises(PhantomLensError, match="context is empty"):
        resolve(tokenizer, "   ", " shame", " guilt")
    with pytest.raises(PhantomLensError, match="target is empty"):
        resolve(tokenizer, "She felt", " ", " guilt")


def test_leading_space_is_added(llama):
    _, tokenizer = llama
    spec = resolve(tokenizer, "She felt a deep sense of", "shame", "guilt")
    assert spec.target == " shame" and spec.competitor == " guilt"
    assert spec.target_id == tokenizer.encode(" shame")[0]


def test_competitor_already_below_target_warns(llama):
    model, tokenizer = llama
    ids = torch.tensor([tokenizer.encode("She felt a deep sense of")])
    with evaluation(model):
        logits = last_token_logits(model, ids)
    a, b = " shame", " guilt"
    if logits[tokenizer.encode(a)[0]] < logits[tokenizer.encode(b)[0]]:
        a, b = b, a  # a now out-ranks b: using b as the competitor leaves nothing to flip
    with pytest.warns(UserWarning, match="nothing to flip"):
        spec = resolve(tokenizer, "She felt a deep sense of", a, b, model=model)
    assert any("nothing to flip" in note for note in spec.notes)


def test_automatic_competitor_follows_the_documented_rule():
    model, tokenizer = make_tiny("llama")
    text = "She felt a deep sense of"
    ids = torch.tensor([tokenizer.encode(text)])
    with evaluation(model):
        logits = last_token_logits(model, ids)
    order = torch.argsort(logits, descending=True)
    rank = next(  # a word token that round-trips, with at least five tokens above it
        r
        for r in range(5, len(order))
        if tokenizer.encode(tokenizer.decode([int(order[r])])) == [int(order[r])]
        and tokenizer.decode([int(order[r])]).startswith(" ")
    )
    target_id = int(order[rank])
    chosen = pick_competitor(model, ids, target_id)
    above = order[:rank]
    u = output_embedding(model).detach()
    states = u / u.norm(dim=1, keepdim=True)
    overlaps = states[above] @ states[target_id]
    assert chosen == int(above[int(torch.argmax(overlaps))])
    spec = resolve(tokenizer, text, tokenizer.decode([target_id]), None, model=model)
    assert spec.competitor_id == chosen
    assert any("picked automatically" in n for n in spec.notes)
    with pytest.raises(PhantomLensError, match="nothing to flip"):
        pick_competitor(model, ids, int(order[0]))
