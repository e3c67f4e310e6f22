"""The pre-registered class prediction follows from the stored results, and is never overwritten."""

from __future__ import annotations

import json

import pytest

from tools import preregister


def test_the_registration_follows_from_the_stored_results(capsys):
    if not preregister.OUT.is_file():
        pytest.skip("no registration stored")
    assert preregister.main(["--check"]) == 0
    assert "follows from" in capsys.readouterr().out
    assert preregister.main([]) == 1  # never overwritten


def test_an_edited_registration_is_caught(tmp_path, monkeypatch, capsys):
    if not preregister.OUT.is_file():
        pytest.skip("no registration stored")
    edited = json.loads(preregister.OUT.read_text())
    edited["predictions"]["geometry"]["R"] *= 1.5
    path = tmp_path / "preregistration.json"
    path.write_text(json.dumps(edited))
    monkeypatch.setattr(preregister, "OUT", path)
    monkeypatch.setattr(preregister, "ROOT", tmp_path)
    assert preregister.main(["--check"]) == 1
    assert "DIFFERS" in capsys.readouterr().out
