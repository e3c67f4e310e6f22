"""The facts study behind docs/facts.md: the project's fact set trained jointly on real models.

    python -m tools.facts_study               # run what is missing (resumable), then write the doc
    python -m tools.facts_study --doc-only    # rewrite docs/facts.md from the stored results

For each (model, mode) of ``PLAN``: one fact-set prediction (``predict --facts``, the joint and
single-fact η̂_c of every fact; it does not depend on the run's LR) and one joint run of every
fact at each of three peak LRs (``run --facts``). Results go to results/facts/<model>/<mode>/:
prediction.json and lr=<η>/ (a fact-set run directory). A finished item is never redone, so a
killed study resumes where it stopped. The doc is written by ``tools.facts_doc``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACTS_FILE = ROOT / "data" / "facts.jsonl"
RESULTS = ROOT / "results" / "facts"
#: Shorter than a single-context run's default 50: one joint step over the 183 facts is about half a
#: minute on the 2-core CPU machine, and the study has to fit in an afternoon.
STEPS = 20

#: (model, mode, peak LRs), in the order they run; the LRs straddle the default LR of each mode.
#: Gemma (a step costs about twice SmolLM2's) has one LR.
PLAN = (
    ("smollm2-135m", "lora", (3e-4, 1e-3, 3e-3)),
    ("smollm2-135m", "full", (1e-6, 3e-6, 1e-5)),
    ("gemma3-270m", "lora", (1e-3,)),
)


def run_dir(model: str, mode: str, lr: float) -> Path:
    return RESULTS / model / mode / f"lr={lr:g}"


def prediction_path(model: str, mode: str) -> Path:
    return RESULTS / model / mode / "prediction.json"


def _config(model: str, mode: str, lr: float | None = None):
    from phantomlens.settings import RunConfig

    return RunConfig(model=model, mode=mode, lr=lr, steps=STEPS, facts=str(FACTS_FILE.relative_to(ROOT)))


def predict_missing(model: str, mode: str) -> None:
    from phantomlens.atomic import write_json_atomic
    from phantomlens.factpredict import predict_facts

    path = prediction_path(model, mode)
    if path.is_file():
        return
    started = time.perf_counter()
    prediction = predict_facts(_config(model, mode))
    write_json_atomic(path, prediction.to_dict())
    print(f"  predicted {model} {mode}: {time.perf_counter() - started:.0f} s", flush=True)


def run_missing_runs(model: str, mode: str, lrs: tuple[float, ...]) -> None:
    from phantomlens.train import finetune

    for lr in lrs:
        out = run_dir(model, mode, lr)
        if (out / "summary.json").is_file():
            continue
        started = time.perf_counter()
        result = finetune(_config(model, mode, lr), out=out, progress=False)
        print(
            f"  ran {model} {mode} η={lr:g}: {result.summary.n_flipped}/{result.summary.n_facts} flipped, "
            f"{len(result.summary.silent_failures)} silent, {time.perf_counter() - started:.0f} s",
            flush=True,
        )


@contextlib.contextmanager
def heavy() -> Iterator[None]:
    """Hold the lock file named by $PHANTOMLENS_LOCK (if any) while one model works: on a small
    machine two model processes at once slow each other down many times over."""
    name = os.environ.get("PHANTOMLENS_LOCK")
    if not name:
        yield
        return
    import fcntl

    with open(name, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_order() -> list[tuple[str, str, float]]:
    """Every (model, mode, LR) of the plan, breadth first: each (model, mode) gets its middle LR
    before any gets another, so a study cut short still covers every model and mode."""
    first = [(model, mode, lrs[len(lrs) // 2]) for model, mode, lrs in PLAN]
    rest = [(model, mode, lr) for model, mode, lrs in PLAN for lr in lrs if (model, mode, lr) not in first]
    return first + rest


def run_missing() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("PHANTOMLENS_THREADS", "2")))
    os.chdir(ROOT)  # the runs record the fact file as data/facts.jsonl
    for model, mode, lr in run_order():
        with heavy():
            predict_missing(model, mode)
        with heavy():
            run_missing_runs(model, mode, (lr,))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.facts_study", description=__doc__.split("\n")[0])
    parser.add_argument("--doc-only", action="store_true", help="only rewrite docs/facts.md")
    args = parser.parse_args(argv)
    if not args.doc_only:
        run_missing()
    from tools import facts_doc

    facts_doc.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
