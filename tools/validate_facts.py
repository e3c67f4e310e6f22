"""Check a fact file against the tokenizers of the built-in models.

Every fact is tokenised with ``phantomlens.facts.tokenize_fact`` under each model's tokenizer (only
the tokenizer is loaded, never the weights), and the tool reports per model: the number of facts,
how many are single-token (both answers one token), the multi-token share, the distribution of the
branch position k*, the longest answer in tokens, and every fact that fails, with its error.

    python -m tools.validate_facts                                   # data/facts.jsonl, all models
    python -m tools.validate_facts data/facts.jsonl --models smollm2-135m --json report.json

The exit status is 1 when a fact fails for some model, when the file holds fewer than
``MIN_FACTS`` facts, or when fewer than half of them are multi-token for some model; else 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phantomlens.atomic import write_json_atomic
from phantomlens.errors import PhantomLensError
from phantomlens.facts import Fact, TokenizedFact, load_facts, tokenize_fact
from phantomlens.models import (
    BUILTIN_MODELS,
    _gguf_source,
    _manifest_ok,
    cached_model_dir,
    quiet_libraries,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = ROOT / "data" / "facts.jsonl"
MIN_FACTS = 150
MIN_MULTI_TOKEN_SHARE = 0.5


def load_tokenizer(name: str) -> Any:
    """The tokenizer of a built-in model, found where ``phantomlens.models`` finds the model.

    The dequantized cache is read when it is complete; otherwise the tokenizer is read from the
    GGUF file the model's package ships (the weights are neither loaded nor converted).
    """
    if name not in BUILTIN_MODELS:
        raise PhantomLensError(f"unknown model {name!r}; built-in models are {', '.join(BUILTIN_MODELS)}")
    quiet_libraries()
    from transformers import AutoTokenizer

    directory = cached_model_dir(name)
    if _manifest_ok(directory):
        return AutoTokenizer.from_pretrained(directory)
    with tempfile.TemporaryDirectory(prefix="phantomlens-tokenizer-") as work:
        gguf_dir, gguf_name = _gguf_source(BUILTIN_MODELS[name], Path(work) / "gguf")
        return AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)


def category(fact: Fact) -> str:
    """The fact's category: the prefix of its name before the first underscore."""
    return fact.label.split("_", 1)[0]


def _tokenize_all(tokenizer: Any, facts: list[Fact]) -> tuple[list[TokenizedFact], list[dict[str, str]]]:
    done, failures = [], []
    for fact in facts:
        try:
            done.append(tokenize_fact(tokenizer, fact))
        except PhantomLensError as exc:
            failures.append({"name": fact.label, "error": str(exc)})
    return done, failures


def _is_multi_token(item: TokenizedFact) -> bool:
    return len(item.target_ids) > 1 or len(item.competitor_ids) > 1


def _by_category(facts: list[Fact], done: list[TokenizedFact]) -> dict[str, dict[str, int]]:
    counts = {name: {"facts": 0, "multi_token": 0} for name in sorted({category(f) for f in facts})}
    for fact in facts:
        counts[category(fact)]["facts"] += 1
    for item in done:
        counts[category(item.fact)]["multi_token"] += int(_is_multi_token(item))
    return counts


def _problems(report: dict[str, Any]) -> list[str]:
    problems = [f"facts that fail to tokenise: {len(report['failures'])}"] if report["failures"] else []
    if report["facts"] < MIN_FACTS:
        problems.append(f"only {report['facts']} facts; at least {MIN_FACTS} are needed")
    if report["multi_token_share"] < MIN_MULTI_TOKEN_SHARE:
        problems.append(
            f"only {report['multi_token_share']:.1%} of the facts are multi-token; "
            f"at least {MIN_MULTI_TOKEN_SHARE:.0%} are needed"
        )
    return problems


def validate_model(facts: list[Fact], model: str, tokenizer: Any) -> dict[str, Any]:
    """The report for one model: counts, the branch positions, the longest answer, the failures."""
    done, failures = _tokenize_all(tokenizer, facts)
    multi = sum(_is_multi_token(item) for item in done)
    lengths = [len(ids) for item in done for ids in (item.target_ids, item.competitor_ids)]
    branches = Counter(item.branch for item in done)
    report: dict[str, Any] = {
        "model": model,
        "facts": len(facts),
        "single_token": len(done) - multi,
        "multi_token": multi,
        "multi_token_share": multi / len(facts) if facts else 0.0,
        "branch_positions": {str(k): branches[k] for k in sorted(branches)},
        "max_answer_tokens": max(lengths, default=0),
        "categories": _by_category(facts, done),
        "failures": failures,
    }
    report["problems"] = _problems(report)
    report["ok"] = not report["problems"]
    return report


#: The built-in models `make setup` installs (qwen2.5-0.5b is optional: `--models qwen2.5-0.5b`
#: after `make qwen`).
DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")


def validate(path: str | Path = DEFAULT_FILE, models: Sequence[str] = DEFAULT_MODELS) -> dict[str, Any]:
    """Load the facts at ``path`` and check them against each model's tokenizer."""
    facts = load_facts(path)
    reports = [validate_model(facts, model, load_tokenizer(model)) for model in models]
    return {"file": str(path), "models": reports, "ok": all(r["ok"] for r in reports)}


def _branch_text(branches: dict[str, int]) -> str:
    return " ".join(f"k{k}={n}" for k, n in branches.items()) or "-"


def format_report(report: dict[str, Any]) -> str:
    """A short table: one row per model, then each model's categories, failures and problems."""
    lines = [
        f"{report['file']}",
        f"{'model':<14} {'facts':>5} {'single':>6} {'multi':>5} {'multi%':>7} {'max len':>7}  branch k*",
    ]
    for r in report["models"]:
        branches = _branch_text(r["branch_positions"])
        lines.append(
            f"{r['model']:<14} {r['facts']:>5} {r['single_token']:>6} {r['multi_token']:>5} "
            f"{r['multi_token_share']:>7.1%} {r['max_answer_tokens']:>7}  {branches}"
        )
    for r in report["models"]:
        cats = ", ".join(f"{name} {c['multi_token']}/{c['facts']}" for name, c in r["categories"].items())
        lines.append(f"{r['model']}: multi-token by category: {cats}")
        lines += [f"  FAIL {f['name']}: {f['error']}" for f in r["failures"]]
        lines += [f"  PROBLEM {problem}" for problem in r["problems"]]
    lines.append("ok" if report["ok"] else "NOT OK")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.validate_facts", description=__doc__.split("\n")[0]
    )
    parser.add_argument("file", nargs="?", default=str(DEFAULT_FILE), help="a .jsonl or .csv fact file")
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        choices=list(BUILTIN_MODELS),
        metavar="MODEL",
        help=f"built-in models whose tokenizers are used (default: {', '.join(DEFAULT_MODELS)}; "
        f"any of {', '.join(BUILTIN_MODELS)})",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON to OUT")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = validate(args.file, args.models)
    except PhantomLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        write_json_atomic(Path(args.json), report)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
