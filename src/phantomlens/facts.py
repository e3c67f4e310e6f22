"""A user's facts: a prompt, a target answer and a competitor answer, each possibly several tokens.

A fact generalises a near-synonym context (docs/method.md, "Facts of several tokens"): the answers
are tokenised as continuations of the prompt, the margin is the difference of their sequence
log-likelihoods, and the readout is taken at the *branch position* k*, the first answer token where
target and competitor differ. A single-token fact is exactly a context.

Fact files are JSON Lines (one object per line) or CSV (a header row), with the fields ``prompt``,
``target``, ``competitor`` and optional ``name`` and ``chat``. Every problem is one error naming the
file and the line. Nothing heavy is imported here: reading a fact file needs no model.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from phantomlens.errors import PhantomLensError, clip, listed, short

#: The longest answer accepted, in tokens: each answer costs a forward pass over it at every step.
MAX_ANSWER_TOKENS = 32

FIELDS = ("prompt", "target", "competitor", "name", "chat")


@dataclass(frozen=True)
class Fact:
    """``prompt`` should be continued by ``target``, not by ``competitor``."""

    prompt: str
    target: str
    competitor: str = ""  # empty: picked by the documented rule (single-token targets only)
    name: str = ""
    chat: bool = False  # wrap the prompt in the tokenizer's chat template (answers get no leading space)

    def __post_init__(self) -> None:
        for field in ("prompt", "target", "competitor", "name"):
            if not isinstance(getattr(self, field), str):
                raise PhantomLensError(f"{field} must be text, got {short(getattr(self, field))}")
        if not isinstance(self.chat, bool):
            raise PhantomLensError(f"chat must be true or false, got {short(self.chat)}")
        for field in ("prompt", "target"):
            if not getattr(self, field).strip():
                raise PhantomLensError(f"{field} is empty")
        if self.competitor and not self.competitor.strip():
            raise PhantomLensError("competitor is empty")
        if self.target.strip() == self.competitor.strip():
            same = short(self.target.strip())
            raise PhantomLensError(f"target and competitor are the same answer ({same})")

    @property
    def label(self) -> str:
        """The fact's name, or its prompt when it has none."""
        return self.name or self.prompt

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_facts(path: str | Path) -> list[Fact]:
    """The facts of a ``.jsonl`` or ``.csv`` file, validated; names must be unique."""
    path = Path(path)
    if path.is_dir():
        raise PhantomLensError(f"fact file {path} is a directory; give a .jsonl or .csv file")
    if not path.is_file():
        raise PhantomLensError(f"fact file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Excel's CSV) is not text
    except (OSError, UnicodeDecodeError) as exc:
        raise PhantomLensError(
            f"fact file {path} cannot be read as UTF-8 text ({type(exc).__name__})"
        ) from None
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path, text)
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = _jsonl_rows(path, text)
    else:
        raise PhantomLensError(f"fact file {path} must end in .jsonl or .csv")
    facts = [_fact(path, line, row) for line, row in rows]
    if not facts:
        raise PhantomLensError(f"fact file {path} holds no facts")
    _check_unique(path, facts)
    return facts


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    rows = []
    # Lines end at \n only: JSON strings may hold U+2028 and other characters splitlines() breaks at.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise PhantomLensError(f"{path}, line {number}: not JSON ({exc.args[0]})") from None
        if not isinstance(row, dict):
            raise PhantomLensError(f"{path}, line {number}: a fact must be a JSON object")
        rows.append((number, row))
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted fields keep their newlines
    if reader.fieldnames is None:
        return []
    repeated = sorted({name for name in reader.fieldnames if reader.fieldnames.count(name) > 1})
    if repeated:
        raise PhantomLensError(f"{path}, line 1: the header names {', '.join(map(clip, repeated))} twice")
    rows = []
    for row in reader:
        if None in row:
            raise PhantomLensError(f"{path}, line {reader.line_num}: more cells than the header has")
        chat = (row.get("chat") or "").strip().lower()
        if chat and chat not in ("true", "false", "1", "0", "yes", "no"):
            raise PhantomLensError(
                f"{path}, line {reader.line_num}: chat must be true or false, got {short(chat)}"
            )
        cleaned: dict[str, Any] = {k: v for k, v in row.items() if k != "chat" and v is not None}
        if chat:
            cleaned["chat"] = chat in ("true", "1", "yes")
        rows.append((reader.line_num, cleaned))
    return rows


def with_space(word: str, text: str) -> str:
    """``word`` as a continuation of running ``text`` is spelled: with its leading space, unless the
    text already ends in whitespace (the one rule for contexts, facts and watched items)."""
    if word and not word[0].isspace() and text and not text[-1].isspace():
        return " " + word
    return word


def several_tokens(tokenizer, text: str, *words: str | None) -> bool:
    """Whether any of ``words``, continuing ``text``, is more than one token (a fact, not a context)."""
    return any(
        len(tokenizer.encode(with_space(word, text), add_special_tokens=False)) > 1 for word in words if word
    )


def _fact(path: Path, line: int, row: dict) -> Fact:
    unknown = sorted(set(row) - set(FIELDS))
    missing = [field for field in ("prompt", "target") if field not in row]
    if unknown:
        raise PhantomLensError(
            f"{path}, line {line}: unknown fields {listed([clip(u) for u in unknown])}; "
            f"known: {', '.join(FIELDS)}"
        )
    if missing:
        raise PhantomLensError(f"{path}, line {line}: missing {', '.join(missing)}")
    try:
        return Fact(**row)
    except PhantomLensError as exc:
        raise PhantomLensError(f"{path}, line {line}: {exc}") from None


def _check_unique(path: Path, facts: list[Fact]) -> None:
    seen: set[str] = set()
    for fact in facts:
        if fact.label in seen:
            raise PhantomLensError(f"{path}: two facts are named {short(fact.label)}; names must be unique")
        seen.add(fact.label)


@dataclass(frozen=True)
class TokenizedFact:
    """A fact checked against one tokenizer: the ids the model sees and the branch position."""

    fact: Fact
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    competitor_ids: tuple[int, ...]
    branch: int  # k*: the first answer position where target and competitor tokens differ

    @property
    def target_id(self) -> int:
        """c: the target's token at the branch position."""
        return self.target_ids[self.branch]

    @property
    def competitor_id(self) -> int:
        """n: the competitor's token at the branch position."""
        return self.competitor_ids[self.branch]

    @property
    def branch_prefix(self) -> tuple[int, ...]:
        """The prompt and the answer tokens shared before the branch: where the readout is taken."""
        return self.prompt_ids + self.target_ids[: self.branch]


def tokenize_fact(tokenizer, fact: Fact) -> TokenizedFact:
    """Tokenise the prompt (through the chat template when ``fact.chat``) and both answers."""
    if not fact.competitor:
        raise PhantomLensError(f"fact {short(fact.label)} has no competitor; give one")
    prompt, prompt_ids = encode_prompt(tokenizer, fact)
    target_ids = encode_answer(tokenizer, fact, prompt, "target")
    competitor_ids = encode_answer(tokenizer, fact, prompt, "competitor")
    branch = next((k for k, (a, b) in enumerate(zip(target_ids, competitor_ids)) if a != b), None)
    if branch is None:
        shorter = "target" if len(target_ids) < len(competitor_ids) else "competitor"
        raise PhantomLensError(
            f"fact {short(fact.label)}: the {shorter} is a prefix of the other answer, so they never branch "
            "into different tokens; give answers that differ in some token"
        )
    return TokenizedFact(fact, prompt_ids, target_ids, competitor_ids, branch)


def encode_prompt(tokenizer, fact: Fact) -> tuple[str, tuple[int, ...]]:
    """The prompt as the model sees it (chat-wrapped or not) and its token ids."""
    prompt = chat_prompt(tokenizer, fact.prompt) if fact.chat else fact.prompt
    return prompt, tuple(tokenizer.encode(prompt, add_special_tokens=not fact.chat))


def encode_answer(tokenizer, fact: Fact, prompt: str, role: str) -> tuple[int, ...]:
    """The ids of the ``role`` answer as a continuation of ``prompt``, length-checked."""
    answer = getattr(fact, role)
    if not fact.chat:
        answer = with_space(answer, prompt)  # a continuation of running text starts with its space
    ids = tuple(tokenizer.encode(answer, add_special_tokens=False))
    if not ids or len(ids) > MAX_ANSWER_TOKENS:
        raise PhantomLensError(
            f"fact {short(fact.label)}: the {role} {short(answer)} is {len(ids)} tokens; "
            f"answers of 1 to {MAX_ANSWER_TOKENS} tokens are accepted"
        )
    return ids


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as one user message with the generation prompt, by the tokenizer's own template."""
    if not getattr(tokenizer, "chat_template", None):
        raise PhantomLensError(
            "this model's tokenizer has no chat template, so its prompts cannot be chat prompts; "
            "leave out --chat (and chat: true in the fact file)"
        )
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def fact_examples(tokenizer, facts: list[Fact]) -> list[dict[str, list[int]]]:
    """Training examples for your own loop: each fact as ``input_ids`` (prompt + target) and
    ``labels`` (-100 on the prompt, so the loss is the target's tokens only), tokenised exactly as
    the probe and the callback read the fact. Pad them with your collator."""
    examples = []
    for fact in facts:
        tokenized = tokenize_fact(tokenizer, fact)
        examples.append(
            {
                "input_ids": [*tokenized.prompt_ids, *tokenized.target_ids],
                "labels": [-100] * len(tokenized.prompt_ids) + list(tokenized.target_ids),
            }
        )
    return examples
