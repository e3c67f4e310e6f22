"""docs/findings.md (and the docs it regenerates) are exactly what the stored results produce."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ["findings.md", "phantoms.md", "critical-lr.md", "early-stopping.md"]


def test_committed_findings_are_regenerated_from_stored_results(tmp_path):
    for part in ("scripts", "benchmarks", "results", "docs"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("*.png", "__pycache__"))
    for name in GENERATED:
        (tmp_path / "docs" / name).unlink()
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "findings.py"), "--doc-only"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in GENERATED:
        regenerated = (tmp_path / "docs" / name).read_text()
        assert regenerated == (ROOT / "docs" / name).read_text(), f"docs/{name} differs from its sources"
    assert (tmp_path / "docs" / "figures" / "phase-gemma3-270m.png").stat().st_size > 10_000
