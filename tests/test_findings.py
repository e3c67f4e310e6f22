"""docs/findings.md (and the docs it regenerates) are exactly what the stored results produce."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ["findings.md", "phantoms.md", "critical-lr.md", "early-stopping.md"]


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    """The tools, benchmarks, stored results and docs, copied: the generator rewrites stored files."""
    root = tmp_path_factory.mktemp("repo")
    for part in ("tools", "benchmarks", "results", "docs"):
        shutil.copytree(ROOT / part, root / part, ignore=shutil.ignore_patterns("*.png", "__pycache__"))
    return root


def run_in(root: Path, code: str) -> subprocess.CompletedProcess:
    # `-c` puts the working directory first on sys.path: `tools` and `benchmarks` are the copies.
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=900)


@pytest.mark.integration  # regenerates every generated doc and figure: over a minute
def test_committed_findings_are_regenerated_from_stored_results(copy):
    for name in GENERATED:
        (copy / "docs" / name).unlink()
    proc = run_in(copy, "import sys; from tools.findings import main; sys.argv[1:] = ['--doc-only']; main()")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in GENERATED:
        regenerated = (copy / "docs" / name).read_text()
        assert regenerated == (ROOT / "docs" / name).read_text(), f"docs/{name} differs from its sources"
    assert (copy / "docs" / "figures" / "phase-gemma3-270m.png").stat().st_size > 10_000


def test_with_every_result_stored_nothing_is_trained(copy):
    # Every way the generator could start a model is refused: loading one here, or a sweep
    # handing a run or a prediction to a worker.
    code = (
        "import importlib\n"
        "modules = ('models', 'train', 'sweep')\n"
        "models, train, sweep = (importlib.import_module(f'phantomlens.{m}') for m in modules)\n"
        "def refuse(*args, **kwargs):\n"
        "    raise SystemExit(f'would run a model: {args[:2]!r}')\n"
        "models.load_model = models.load_model_cached = train.finetune = refuse\n"
        "sweep._Backend.submit = refuse\n"
        "from tools.findings import run_missing\n"
        "run_missing()\n"
    )
    proc = run_in(copy, code)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert "runs complete" in proc.stdout


@pytest.fixture(scope="module")
def findings():
    """The claims computed from the stored results (read only: nothing is rewritten)."""
    from tools import claims, findings_data

    return claims.compute(findings_data.load_stored())


def _figures() -> dict[str, str]:
    from tools.findings_data import MODELS

    return {**{f"phase-{m}": f"{m}.png" for m in MODELS}, "failure-modes": "c.png", "jumps": "d.png"}


FIGURES = _figures()


def test_every_verdict_follows_the_data(findings):
    """Each data-dependent sentence of today's doc, and the words it turns into when the data changes."""
    from dataclasses import replace

    from tools import findings_md as md

    doc = md.render(findings, FIGURES)
    for sentence in (
        "common on SmolLM2 and Qwen, nearly absent on Gemma",
        "the jumps come with the flip, on all three models",
        "The replay variant's κ is closest to 1 and tightest.",
        "just below η_c nearly every failure is silent",
        "holds and beats 30%",
        "(η ≥ 0.03, or SGD at η = 10)",
        "AdamW (SGD in 2 runs)",
        "agree to 2.5e-5 in the margin",
    ):
        assert sentence in doc

    modes = replace(findings.failure_modes, structural_presence=dict.fromkeys(md.MODELS, "common"))
    assert "is common on SmolLM2, Gemma and Qwen." in " ".join(md.failure_modes_section(modes, "x.png"))
    jumps = replace(findings.jumps, flip_always_models=["gemma3-270m"])
    assert "on gemma3-270m, not on every model" in " ".join(md.jumps_section(jumps, "x.png"))
    silent = replace(findings.silent, silent_share=0.4, near_critical_share=0.5)
    text = " ".join(md.silent_section(silent))
    assert "less common way to fail: 40.0%" in text and "(η ≥ 0.9·η_c) 50.0% of failures" in text
    stop = replace(findings.early_stop, median_saving=0.2)
    assert "not reproduced: below 30%" in " ".join(md.early_stop_section(stop))
    first, *rest = findings.kappa.consistency
    kappa = replace(findings.kappa, consistency=[replace(first, distance_from_one=0.0), *rest])
    assert "first-order variant's κ is closest to 1; the replay variant's is the tightest" in " ".join(
        md.kappa_section(kappa)
    )


def test_verdicts_on_classes_symmetry_and_the_gpu_follow_the_data(findings):
    from dataclasses import replace

    from tools import findings_md as md

    wrong = findings.classes.wrong[0]
    assert "predicted to need full fine-tuning, yet LoRA flipped its contexts" in md._classes_verdict(
        findings.classes
    )
    classes = replace(findings.classes, rows=[replace(r, right=True) for r in findings.classes.rows])
    assert md._classes_verdict(classes) == f"holds on {md._every_model(md.MODELS)}."
    flipped_few = replace(wrong, predicted_sufficient=True, flipped=3)
    assert "suffice with LoRA, yet LoRA flipped only 3 of its 12 contexts" in md._wrong_prediction(
        flipped_few
    )
    phantoms_only = [replace(j, phantom=True) for j in findings.symmetry.jumps]
    symmetry = replace(findings.symmetry, jumps=phantoms_only)
    assert "At extreme LRs, too, the readout carries every jump." in md._symmetry_extreme(symmetry)
    gpu = replace(findings.gpu, cpu_seconds=findings.gpu.gpu_seconds * 1.2)
    assert "would take longer on the CPU" in md._gpu_sentence(replace(findings, gpu=gpu))
