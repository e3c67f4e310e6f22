"""docs/facts.md is exactly what the stored results of the facts study produce."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration  # reads every stored fact-set run and draws the overview figure
def test_committed_facts_doc_is_regenerated_from_stored_results(tmp_path):
    for part in ("tools", "results", "docs", "data"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    code = "from tools.facts_study import main; main(['--doc-only'])"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "docs" / "facts.md").read_text() == (ROOT / "docs" / "facts.md").read_text()
