"""Facts of several tokens: files, validation, tokenisation, the branch position, sequence margins."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import make_tiny, tiny_tokenizer

from phantomlens.errors import PhantomLensError
from phantomlens.facts import MAX_ANSWER_TOKENS, Fact, load_facts, tokenize_fact
from phantomlens.forward import answer_logprobs, evaluation, last_token_logits, sequence_margin

PROMPT = "She felt a deep sense of"


def write_jsonl(path, rows) -> None:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")


def test_jsonl_and_csv_give_the_same_facts(tmp_path):
    rows = [
        {"prompt": PROMPT, "target": " shame", "competitor": " guilt", "name": "shame"},
        {"prompt": "The river flows into the", "target": "sea", "competitor": "ocean", "chat": True},
    ]
    write_jsonl(tmp_path / "f.jsonl", rows)
    (tmp_path / "f.csv").write_text(
        "name,prompt,target,competitor,chat\n"
        f'shame,{PROMPT}," shame"," guilt",\n'
        ",The river flows into the,sea,ocean,true\n"
    )
    from_jsonl, from_csv = load_facts(tmp_path / "f.jsonl"), load_facts(tmp_path / "f.csv")
    assert from_jsonl == from_csv == [Fact(**rows[0]), Fact(**rows[1])]
    assert from_jsonl[1].label == "The river flows into the" and from_jsonl[1].chat


BAD_FILES = [
    (
        "f.jsonl",
        '{"prompt": "a", "target": "b", "competitor": "c"}\n{not json\n',
        "f.jsonl, line 2: not JSON",
    ),
    ("f.jsonl", '{"prompt": "a"}\n', "line 1: missing target"),
    ("f.jsonl", '{"prompt": "a", "target": " ", "competitor": "c"}\n', "line 1: target is empty"),
    ("f.jsonl", '{"prompt": "a", "target": " b", "competitor": "b"}\n', "target and competitor are the same"),
    (
        "f.jsonl",
        '{"prompt": "a", "target": "b", "competitor": "c", "answer": "d"}\n',
        "unknown fields answer",
    ),
    (
        "f.jsonl",
        '{"prompt": "a", "target": "b", "competitor": "c", "chat": "yes"}\n',
        "chat must be true or false",
    ),
    ("f.jsonl", '{"prompt": 3, "target": "b", "competitor": "c"}\n', "prompt must be text"),
    ("f.jsonl", "[1, 2]\n", "a fact must be a JSON object"),
    ("f.jsonl", "\n\n", "holds no facts"),
    (
        "f.jsonl",
        '{"prompt": "a", "target": "b", "competitor": "c"}\n'
        '{"prompt": "a", "target": "d", "competitor": "e"}\n',
        "two facts are named 'a'",
    ),
    ("f.csv", "prompt,target,competitor\na,b,c,d\n", "line 2: more cells than the header has"),
    ("f.csv", "prompt,target,competitor,chat\na,b,c,maybe\n", "chat must be true or false"),
    ("f.txt", "anything", "must end in .jsonl or .csv"),
]


@pytest.mark.parametrize(("name", "content", "expected"), BAD_FILES)
def test_bad_fact_files_are_one_error_naming_file_and_line(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content)
    with pytest.raises(PhantomLensError, match=expected) as info:
        load_facts(tmp_path / name)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_unreadable_and_missing_fact_files(tmp_path):
    (tmp_path / "f.jsonl").write_bytes(b"\xff\xfe\x00 not utf-8")
    with pytest.raises(PhantomLensError, match="cannot be read as UTF-8"):
        load_facts(tmp_path / "f.jsonl")
    with pytest.raises(PhantomLensError, match="does not exist"):
        load_facts(tmp_path / "nope.jsonl")


def test_a_single_token_fact_is_a_context():
    tokenizer = tiny_tokenizer()
    tokenized = tokenize_fact(tokenizer, Fact(PROMPT, "shame", "guilt"))  # the leading space is added
    assert tokenized.branch == 0
    assert tokenized.target_ids == tuple(tokenizer.encode(" shame", add_special_tokens=False))
    assert tokenized.prompt_ids == tuple(tokenizer.encode(PROMPT)) == tokenized.branch_prefix


def test_multi_token_answers_branch_at_their_first_difference():
    tokenizer = tiny_tokenizer()
    tokenized = tokenize_fact(tokenizer, Fact(PROMPT, " shame and guilt", " shame, not guilt"))
    k = tokenized.branch
    assert len(tokenized.target_ids) > 1 and len(tokenized.competitor_ids) > 1
    assert tokenized.target_ids[:k] == tokenized.competitor_ids[:k] and k >= 1
    assert tokenized.target_id != tokenized.competitor_id
    assert tokenized.branch_prefix == tokenized.prompt_ids + tokenized.target_ids[:k]


def test_answers_that_never_branch_or_are_too_long_are_refused():
    tokenizer = tiny_tokenizer()
    with pytest.raises(PhantomLensError, match="target is a prefix of the other answer"):
        tokenize_fact(tokenizer, Fact(PROMPT, " shame", " shame and guilt"))
    with pytest.raises(PhantomLensError, match=f"answers of 1 to {MAX_ANSWER_TOKENS} tokens"):
        tokenize_fact(tokenizer, Fact(PROMPT, " shame" * (MAX_ANSWER_TOKENS + 1), " guilt"))


def test_chat_facts_use_the_tokenizers_template_and_no_leading_space():
    tokenizer = tiny_tokenizer()
    with pytest.raises(PhantomLensError, match="has no chat template"):
        tokenize_fact(tokenizer, Fact(PROMPT, "shame", "guilt", chat=True))
    templated = copy.deepcopy(tokenizer)  # the tiny tokenizer is shared: do not give it a template
    templated.chat_template = (
        "{% for m in messages %}<eos>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %} :{% endif %}"
    )
    tokenized = tokenize_fact(templated, Fact(PROMPT, "shame", "guilt", chat=True))
    rendered = templated.decode(list(tokenized.prompt_ids))
    assert rendered.startswith("<eos>" + PROMPT) and rendered.endswith(" :")
    assert tokenized.target_ids == tuple(templated.encode("shame", add_special_tokens=False))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_sequence_margin_of_one_token_answers_is_the_logit_difference(arch):
    model, tokenizer = make_tiny(arch)
    tokenized = tokenize_fact(tokenizer, Fact(PROMPT, " shame", " guilt"))
    with evaluation(model):
        margin = float(
            sequence_margin(model, tokenized.prompt_ids, tokenized.target_ids, tokenized.competitor_ids)
        )
        logits = last_token_logits(model, torch.tensor([tokenized.prompt_ids])).double()
    assert margin == pytest.approx(
        float(logits[tokenized.target_id] - logits[tokenized.competitor_id]), abs=1e-9
    )


def test_teacher_forcing_equals_one_pass_per_prefix():
    model, tokenizer = make_tiny("llama")
    tokenized = tokenize_fact(tokenizer, Fact(PROMPT, " shame and guilt", " shame, not guilt"))
    with evaluation(model):
        joint = answer_logprobs(model, tokenized.prompt_ids, tokenized.target_ids)
        one_by_one = []
        for k, token in enumerate(tokenized.target_ids):
            prefix = torch.tensor([tokenized.prompt_ids + tokenized.target_ids[:k]])
            one_by_one.append(float(torch.log_softmax(last_token_logits(model, prefix).double(), -1)[token]))
    assert joint.tolist() == pytest.approx(one_by_one, abs=1e-5)


def test_contexts_lists_a_fact_file(tiny_dir, tmp_path, capsys):
    from phantomlens.cli import main

    write_jsonl(
        tmp_path / "f.jsonl",
        [
            {"prompt": PROMPT, "target": " shame", "competitor": " guilt", "name": "one-token"},
            {
                "prompt": PROMPT,
                "target": " shame and guilt",
                "competitor": " shame, not guilt",
                "name": "two",
            },
        ],
    )
    assert main(["contexts", "--model", str(tiny_dir), "--facts", str(tmp_path / "f.jsonl"), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["facts"]
    assert [f["name"] for f in listed] == ["one-token", "two"]
    assert listed[0]["branch"] == 0 and listed[1]["branch"] >= 1
    assert all(f["valid"] == (f["margin"] < 0) for f in listed)
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    assert main(["contexts", "--model", str(tiny_dir), "--facts", str(tmp_path / "bad.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_errors_quote_at_most_a_line_of_the_users_own_text(tmp_path, tiny_dir, capsys):
    from phantomlens.cli import main
    from phantomlens.errors import QUOTE_LIMIT, short

    words = " ".join(f"word{i}" for i in range(500))
    assert short(words) == repr(words[: QUOTE_LIMIT - 1] + "…") and short("guilt") == "'guilt'"
    with pytest.raises(PhantomLensError) as info:
        tokenize_fact(tiny_tokenizer(), Fact(words, words, "guilt"))
    message = str(info.value)
    assert "word0 word1" in message and "…" in message and len(message) < 3 * QUOTE_LIMIT + 100
    with pytest.raises(PhantomLensError, match="same answer") as info:
        Fact(PROMPT, words, words)
    assert len(str(info.value)) < QUOTE_LIMIT + 60
    write_jsonl(tmp_path / "f.jsonl", [{"prompt": PROMPT, "target": words, "competitor": "guilt"}])
    assert main(["contexts", "--model", str(tiny_dir), "--facts", str(tmp_path / "f.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: fact 'She felt") and "word0" in err and len(err) < 3 * QUOTE_LIMIT + 100
