"""The pre-registered class prediction for a held-out model (docs/findings.md, claim 7).

    python -m tools.preregister                 # write benchmarks/results/preregistration.json once
    python -m tools.preregister --check         # recompute from the stored results and compare

Both current models flip every context under LoRA, so "LoRA suffices" cannot fail. The quantity that
can is R = median over contexts of η_c(LoRA) / η_c(full): how much larger a learning rate LoRA needs
than full fine-tuning for the same flip (LoRA rank 8 on the attention q/v projections, AdamW, cosine,
T = 50, the stored sweeps). From SmolLM2-135M and Gemma-3-270M alone, two rival predictors of R for a
third model, each a straight line in log R through the two models' points:

- geometry: log R linear in the class statistic s = E[G²] of raw token-state overlaps (χ/d);
- vocabulary: log R linear in log V, the vocabulary size (a softmax over more tokens spreads more of
  the gradient's pull).

A prediction counts as right when the held-out model's measured R lies within a factor
``BAND`` of it. The file is written once, before any sweep of the held-out model, and never
overwritten: the commit that adds it is the registration; ``--check`` proves that its numbers follow
from the stored SmolLM2 and Gemma results.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "preregistration.json"
#: The models the prediction is built from, and the one it predicts.
TRAINING_MODELS = ("smollm2-135m", "gemma3-270m")
HELD_OUT = "qwen2.5-0.5b"
#: Right when measured/predicted is within [1/BAND, BAND]: the per-context ratios of one model spread
#: over 0.68–1.64× their median (SmolLM2) and 0.74–1.35× (Gemma); a two-point line adds its own error.
BAND = 2.0


def lora_full_ratio(model: str) -> dict:
    """R and its per-context spread from the stored sweeps (contexts with both η_c measured)."""
    rows = json.loads((RESULTS / "critical_lr.json").read_text())["per_context"]
    eta = {(r["mode"], r["context"]): r["eta_c"] for r in rows if r["model"] == model and r.get("eta_c")}
    contexts = sorted(c for mode, c in eta if mode == "lora" and ("full", c) in eta)
    ratios = [eta[("lora", c)] / eta[("full", c)] for c in contexts]
    median = statistics.median(ratios)
    return {
        "contexts": contexts,
        "median_ratio": median,
        "spread": [min(ratios) / median, max(ratios) / median],
    }


def geometry(model: str) -> dict:
    data = json.loads((RESULTS / f"classify-{model}.json").read_text())
    return {
        "s": data["mean_squared_overlap"],
        "vocab_size": data["vocab_size"],
        "hidden_size": data["hidden_size"],
    }


def line(x: tuple[float, float], y: tuple[float, float], at: float) -> float:
    return y[0] + (at - x[0]) * (y[1] - y[0]) / (x[1] - x[0])


def registration(held_out_geometry: dict) -> dict:
    """The two predictions of the held-out model's R, from the training models' stored results."""
    points = {m: {**geometry(m), **lora_full_ratio(m)} for m in TRAINING_MODELS}
    log_r = tuple(math.log(points[m]["median_ratio"]) for m in TRAINING_MODELS)
    s = tuple(points[m]["s"] for m in TRAINING_MODELS)
    log_v = tuple(math.log(points[m]["vocab_size"]) for m in TRAINING_MODELS)
    by_geometry = math.exp(line(s, log_r, held_out_geometry["s"]))
    by_vocabulary = math.exp(line(log_v, log_r, math.log(held_out_geometry["vocab_size"])))
    return {
        "quantity": "R = median over contexts of eta_c(LoRA) / eta_c(full); LoRA r=8 on q/v, AdamW, "
        "cosine, T=50, the stored sweeps' settings",
        "built_from": points,
        "held_out": {"model": HELD_OUT, **held_out_geometry},
        "predictions": {
            "geometry": {"R": by_geometry, "rule": "log R linear in s = E[G^2] through the two models"},
            "vocabulary": {"R": by_vocabulary, "rule": "log R linear in log V through the two models"},
        },
        "right_when": f"measured R within a factor {BAND:g} of the prediction",
        "band": BAND,
    }


def held_out_geometry() -> dict:
    """The held-out model's class statistic (no training: one pass over its output embedding)."""
    path = RESULTS / f"classify-{HELD_OUT}.json"
    if not path.is_file():
        from phantomlens.atomic import write_json_atomic
        from phantomlens.classify import classify_geometry
        from phantomlens.models import load_model

        model, _ = load_model(HELD_OUT)
        write_json_atomic(path, classify_geometry(model, HELD_OUT).to_dict())
    return geometry(HELD_OUT)


def test_outcome(registered: dict) -> dict | None:
    """The registered predictions against the held-out model's measured R, once both of its sweeps
    (LoRA and full) are stored; None before. Reads only; the registration itself never changes."""
    held_out = registered["held_out"]["model"]
    try:
        measured = lora_full_ratio(held_out)
    except statistics.StatisticsError:  # no context with both η_c measured yet
        return None
    band = registered["band"]
    verdicts = {}
    for name, prediction in registered["predictions"].items():
        factor = measured["median_ratio"] / prediction["R"]
        verdicts[name] = {"R": prediction["R"], "measured_over_predicted": factor,
                          "right": 1 / band <= factor <= band}  # fmt: skip
    return {"model": held_out, "measured": measured, "predictions": verdicts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.preregister", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="recompute and compare; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        stored = json.loads(OUT.read_text())
        fresh = registration({k: stored["held_out"][k] for k in ("s", "vocab_size", "hidden_size")})
        fresh["registered_before"] = stored.get("registered_before")
        same = json.dumps(fresh, sort_keys=True) == json.dumps(stored, sort_keys=True)
        print(f"{OUT.relative_to(ROOT)} {'follows from' if same else 'DIFFERS from'} the stored results")
        outcome = test_outcome(stored)
        if outcome is None:
            print(f"the test waits for {stored['held_out']['model']}'s LoRA and full sweeps")
        else:
            print(f"measured R({outcome['model']}) = {outcome['measured']['median_ratio']:.1f}")
            for name, v in outcome["predictions"].items():
                verdict = "right" if v["right"] else "wrong"
                factor = v["measured_over_predicted"]
                print(f"  {name}: predicted {v['R']:.1f}, measured/predicted {factor:.2f} -> {verdict}")
        return 0 if same else 1
    if OUT.exists():
        print(f"{OUT.relative_to(ROOT)} exists; a registration is never overwritten", file=sys.stderr)
        return 1
    from phantomlens.atomic import write_json_atomic

    result = registration(held_out_geometry())
    result["registered_before"] = f"any {HELD_OUT} sweep (LoRA or full)"
    write_json_atomic(OUT, result)
    predictions = result["predictions"]
    print(f"wrote {OUT.relative_to(ROOT)}: R({HELD_OUT}) geometry {predictions['geometry']['R']:.1f}, "
          f"vocabulary {predictions['vocabulary']['R']:.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
