"""The glossary: one line per term of the output, `phantomlens explain`, and the hint that ends output."""

from __future__ import annotations

import re

import pytest
from tiny_models import make_tiny, tiny_pair

from phantomlens.cli import main
from phantomlens.errors import PhantomLensError
from phantomlens.glossary import TERMS, explain, hint, lookup, terms_in

#: What the issue asked to be explained, in the spellings a user would type.
REQUIRED = [
    "margin", "flip", "silent failure", "kinematic", "structural", "phantom", "signal", "drag", "Φ",
    "phi", "κ", "kappa", "η_c", "critical LR", "class", "branch", "purity", "secure flip",
    "margin_safe", "joint", "quantile",
]  # fmt: skip


@pytest.mark.parametrize("word", REQUIRED)
def test_every_required_term_has_one_line_of_meaning(word):
    term = lookup(word)
    assert term.meaning and "\n" not in term.meaning and len(term.meaning) < 200
    assert explain([word]).startswith(term.label)


def test_names_are_unique_typeable_and_their_patterns_compile():
    names = [t.name for t in TERMS]
    assert len(names) == len(set(names))
    for term in TERMS:
        assert re.fullmatch(r"[a-z_]+", term.name), term.name  # typeable after `phantomlens explain`
        assert lookup(term.name) is term  # a name is never shadowed by another term's alias
        if term.shows:
            re.compile(term.shows)


def test_lookup_ignores_case_spaces_and_hyphens_and_names_the_known_terms():
    assert lookup("Critical-LR") is lookup("critical lr") is lookup("eta_c")
    assert lookup("Silent Failure").name == "silent"
    with pytest.raises(PhantomLensError, match="known terms: margin, flip"):
        lookup("flux capacitor")


def test_every_outcome_a_run_can_have_is_a_term():
    from phantomlens.results import OUTCOMES

    assert set(OUTCOMES) <= {t.name for t in TERMS}


def test_the_hint_names_the_terms_printed_in_table_order():
    text = "outcome   kinematic; loss fell 40%, drag changed -0.01\nΦ 0.2\neta_c  1e-3  predicted(κ=1)"
    assert terms_in(text) == ["outcome", "kinematic", "phi", "drag", "eta_c", "kappa"]
    assert hint(text) == "terms: phantomlens explain outcome kinematic phi drag eta_c kappa"
    assert hint("written report.html (2 runs)") == ""
    assert terms_in("class      A (crowded city)") == ["class"]
    assert "class" not in terms_in("the classify command")


def test_explain_command_prints_every_term_or_those_asked(capsys):
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == len(TERMS) and "terms:" not in out
    assert main(["explain", "kinematic", "drag", "phi"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["kinematic", "drag", "phi"]
    assert main(["explain", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no term 'nope'") and len(err.strip().splitlines()) == 1


def test_a_run_ends_with_a_hint_every_word_of_which_explain_knows(tiny_dir, tmp_path, capsys):
    model, tokenizer = make_tiny("llama")
    target, competitor = tiny_pair(model, tokenizer, "She felt a deep sense of")
    argv = ["run", "--model", str(tiny_dir), "--context", "She felt a deep sense of", "--target", target,
            "--competitor", competitor, "--steps", "3", "--lr", "0.01"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("terms: phantomlens explain ")
    named = last.removeprefix("terms: phantomlens explain ").split()
    assert {"margin", "flip", "phi", "outcome"} <= set(named)
    assert named == terms_in(out.rsplit("\n", 2)[0])  # exactly the terms printed above it
    assert main(["explain", *named]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == len(named)
    assert main([*argv, "--out", str(tmp_path / "j"), "--json"]) == 0
    assert "terms:" not in capsys.readouterr().out  # --json output stays one JSON document
