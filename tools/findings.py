"""Regenerate docs/findings.md: the paper's claims tested on the built-in real models.

    make findings                           # = python -m tools.findings
    python -m tools.findings --doc-only     # rewrite the doc and figures from stored results

Without --doc-only it first runs whatever is missing, resumably (each step skips finished work):
the phantom showcases and scans (tools/phantoms_demo.py), the critical-LR sweeps and range tests
(benchmarks/critical_lr.py), the early-stopping runs (benchmarks/early_stop.py). It then rewrites
those three docs and docs/findings.md with its figures under docs/figures/. Every number in
findings.md is computed from the stored results listed in its "Sources" section: they are read by
``tools.findings_data``, turned into claims and verdicts by ``tools.claims`` and into words by
``tools.findings_md``.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks import critical_lr, early_stop
from tools import claims, figures, findings_md, phantoms_demo
from tools.findings_data import (
    CORE_MODELS,
    DOC,
    FIGURES_DIR,
    GRID_LRS,
    GRIDS,
    MODELS,
    MODES,
    ROOT,
    load_stored,
    sweep_contexts,
)


def run_missing() -> None:
    """Run every result the findings need that is not stored yet (nothing, when all are)."""
    from phantomlens.contexts import builtin_contexts

    started = time.perf_counter()
    print("1/4 phantom showcases and sub-critical scans (results/phantoms)", flush=True)
    phantoms_demo.run_missing()
    print("2/4 critical-LR sweeps and range tests (benchmarks/results/sweeps)", flush=True)
    critical_lr.run_sweeps(CORE_MODELS, MODES, sweep_contexts())
    critical_lr.run_range_tests(CORE_MODELS, MODES, sweep_contexts())
    print("3/4 early-stopping runs (benchmarks/results/early_stop)", flush=True)
    early_stop.run_all(CORE_MODELS, MODES, [c.name for c in builtin_contexts()], early_stop.LRS)
    print(f"4/4 the fixed-LR grid at η = {GRID_LRS} ({GRIDS.relative_to(ROOT)})", flush=True)
    run_grids()
    print(f"runs complete in {time.perf_counter() - started:.0f} s", flush=True)


def run_grids() -> None:
    from phantomlens.settings import SweepConfig
    from phantomlens.sweep import Sweep

    for model in CORE_MODELS:
        for mode in MODES:
            settings = {"model": model, "mode": mode, "contexts": sweep_contexts(), "grid": GRID_LRS}
            Sweep(SweepConfig.from_dict(settings), GRIDS / f"{model}-{mode}").run()


def regenerate_component_docs() -> None:
    """The three docs this one summarises, rewritten from the same stored results."""
    from phantomlens.contexts import builtin_contexts
    from phantomlens.settings import StopRule

    phantoms_demo.write_doc()
    critical_lr.summarize(CORE_MODELS, ["lora", "full"], sweep_contexts(), 0.0)  # + stored optional ones
    rule = StopRule()
    early_stop.summarize(
        CORE_MODELS,
        ["lora", "full"],
        [c.name for c in builtin_contexts()],
        early_stop.LRS,
        {"margin_safe": rule.margin_safe, "patience": rule.patience, "min_delta": early_stop.MIN_DELTA},
        0.0,
    )


def draw_figures(stored) -> dict[str, str]:
    """Every figure of the doc, by name → its path relative to docs/."""
    drawn = {
        f"phase-{m}": figures.phase_figure(m, stored.runs, stored.critical, stored.blind) for m in MODELS
    }
    drawn["failure-modes"] = figures.trajectory_figure(
        [
            ("results/phantoms/smollm2-full-shame-3e-07", "kinematic: SmolLM2, full, shame, η = 3e-7"),
            ("results/phantoms/smollm2-full-chilly-3e-07", "structural: SmolLM2, full, chilly, η = 3e-7"),
        ],
        "failure-modes.png",
    )
    drawn["jumps"] = figures.trajectory_figure(
        [
            ("results/phantoms/smollm2-lora-shame-0.001", "SmolLM2, LoRA, shame, η = 1e-3"),
            ("results/phantoms/gemma3-lora-shame-0.001", "Gemma, LoRA, shame, η = 1e-3"),
        ],
        "jumps.png",
        columns=("phi", "signal", "drag"),
    )
    return drawn


def write_doc() -> None:
    stored = load_stored()
    DOC.write_text(findings_md.render(claims.compute(stored), draw_figures(stored)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--doc-only", action="store_true", help="run nothing; rewrite the docs from stored results"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.doc_only:
        run_missing()
    regenerate_component_docs()
    write_doc()
    print(
        f"written {DOC.relative_to(ROOT)} and {FIGURES_DIR.relative_to(ROOT)}/ in "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
