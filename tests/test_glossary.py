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


def headed(out: str) -> list[str]:
    """The lines of ``explain`` output that name a term (not a fact's second line, indented)."""
    return [line for line in out.strip().splitlines() if not line.startswith(" ")]


def test_explain_command_prints_every_term_or_those_asked(capsys):
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    seconds = sum(bool(t.facts) for t in TERMS)
    assert len(headed(out)) == len(TERMS) and "terms:" not in out
    assert len(out.strip().splitlines()) == len(TERMS) + seconds
    assert main(["explain", "kinematic", "drag", "phi"]) == 0
    lines = headed(capsys.readouterr().out)
    assert [line.split()[0] for line in lines] == ["kinematic", "drag", "phi"]
    assert main(["explain", "nope"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: no term 'nope'") and len(err.strip().splitlines()) == 1


def test_explain_prints_the_known_terms_before_naming_the_unknown_ones(capsys):
    assert main(["explain", "margin", "foo", "signal", "bar"]) == 2
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in headed(out)] == ["margin", "signal"]
    assert err.startswith("error: no terms 'foo', 'bar' in the glossary; known terms: margin")
    assert len(err.strip().splitlines()) == 1


def test_every_scalar_the_logs_and_results_name_is_explained():
    import dataclasses

    from phantomlens.probe import BranchReadout, Observation

    readout = BranchReadout(**{f.name: 0.0 for f in dataclasses.fields(BranchReadout)})
    logged = {key.rsplit("/", 1)[-1] for key in Observation(3, {"fact": readout}, 0, False).scalars()}
    # what PhantomCallback adds at the end and when it stops (phantomlens.callback)
    logged |= {"fraction_flipped", "n_flipped", "n_silent_failures", "stopped"}
    assert {"logp_target", "margin_branch", "secure_steps", "all_flipped"} <= logged
    assert [name for name in sorted(logged) if name not in _known()] == []
    for word in ("p_competitor", "rank_competitor", "logp_competitor", "ℓ", "stop_reason", "rank_t"):
        assert explain([word]).startswith(lookup(word).label)
    assert lookup("ℓ").label == "logp_target (ℓ)" and lookup("stop_reason").name == "stopped"


def _known() -> set[str]:
    from phantomlens.glossary import _BY_KEY

    return set(_BY_KEY)


@pytest.mark.parametrize("word", ["signal", "drag", "phi", "structural", "kinematic"])
def test_a_facts_branch_position_readout_is_said_where_it_differs(word):
    lines = explain([word]).splitlines()
    assert len(lines) == 2 and lines[1].lstrip().startswith("for a fact of several tokens:")
    assert "branch position k*" in lines[1]
    if word == "signal":  # read at k*, flipped on the whole answer: the two can disagree
        assert "sequence margin" in lines[1] and "positive signal and not be flipped" in lines[1]
    if word in ("structural", "kinematic"):
        assert "judged on the readout at the branch position" in lines[1]


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
    assert len(headed(capsys.readouterr().out)) == len(named)
    assert main([*argv, "--out", str(tmp_path / "j"), "--json"]) == 0
    assert "terms:" not in capsys.readouterr().out  # --json output stays one JSON document
