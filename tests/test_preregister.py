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


def _registered(geometry_r: float, vocabulary_r: float) -> dict:
    return {
        "held_out": {"model": "held-out"},
        "band": 2.0,
        "predictions": {"geometry": {"R": geometry_r}, "vocabulary": {"R": vocabulary_r}},
    }


def test_the_outcome_judges_each_prediction_by_its_band(monkeypatch):
    measured = {"contexts": ["a", "b"], "median_ratio": 500.0, "spread": [0.8, 1.2]}
    monkeypatch.setattr(preregister, "lora_full_ratio", lambda model: measured)
    outcome = preregister.test_outcome(_registered(260.0, 240.0))
    assert outcome["measured"] == measured
    geometry, vocabulary = outcome["predictions"]["geometry"], outcome["predictions"]["vocabulary"]
    assert geometry["measured_over_predicted"] == pytest.approx(500 / 260) and geometry["right"]
    assert vocabulary["measured_over_predicted"] == pytest.approx(500 / 240) and not vocabulary["right"]
    # A prediction too high is judged the same way: right down to 1/band, wrong below.
    assert preregister.test_outcome(_registered(1000.0, 1001.0))["predictions"]["geometry"]["right"]
    assert not preregister.test_outcome(_registered(1000.0, 1001.0))["predictions"]["vocabulary"]["right"]


def test_no_outcome_before_the_held_out_model_is_swept(monkeypatch):
    import statistics

    def nothing_measured(model):
        return {"median_ratio": statistics.median([])}

    monkeypatch.setattr(preregister, "lora_full_ratio", nothing_measured)
    assert preregister.test_outcome(_registered(260.0, 240.0)) is None
