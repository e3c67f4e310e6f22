"""What instrumentation costs: step time with and without the readout, interleaved in one process.

For each mode (full, LoRA) on SmolLM2-135M, rounds alternate three step variants on the same
model and optimiser, in rotating order so drift and noise hit all three alike:
  plain         forward, loss, backward, optimiser step (what training costs anyway)
  instrumented  the same plus phantomlens's readout and trajectory row (the runner's own code)
  naive         the same plus a full-vocabulary d×d density matrix: normalise all V rows, build
                ρ = Σ_i p_i |ê_i⟩⟨ê_i|, its fidelities, purity and eigenvalues (the baseline)
  no_spectrum   the instrumented step with --spectral-topk 0 (no purity/entropy)
Overhead = median over rounds of (variant time / plain time) − 1, from paired rounds. The readout's
blocking time (what the training loop waits for) is also timed directly inside each step.

    python benchmarks/overhead.py [--rounds 12] [--model smollm2-135m]
writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from phantomlens.atomic import write_json_atomic
from phantomlens.contexts import get_context, resolve
from phantomlens.models import load_model
from phantomlens.readout import output_embedding
from phantomlens.train import (
    Instrument,
    RunConfig,
    forward_loss,
    make_optimizer,
    prepare_model,
    update,
    versions,
)

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"


def naive_readout(logits: torch.Tensor, unembedding: torch.Tensor, c: int, n: int) -> dict:
    p = torch.softmax(logits.detach().float(), -1)
    u = unembedding.detach()
    states = u / u.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rho = states.T @ (p[:, None] * states)  # d×d over the whole vocabulary: O(V·d²)
    fid_c = states[c] @ rho @ states[c]
    fid_n = states[n] @ rho @ states[n]
    eigenvalues = torch.linalg.eigvalsh(rho).clamp_min(0)
    positive = eigenvalues[eigenvalues > 1e-12]
    return {
        "phi": float(fid_c - fid_n),
        "purity": float((eigenvalues**2).sum()),
        "entropy": float(-(positive * positive.log()).sum()),
    }


def bench_mode(base, tokenizer, mode: str, rounds: int, warmup: int) -> dict:
    ctx = get_context("shame")
    config = RunConfig(mode=mode, lr=1e-7)  # tiny LR: weights stay sane for many steps
    model = prepare_model(copy.deepcopy(base), config)
    model.eval()
    spec = resolve(tokenizer, ctx.text, ctx.target, ctx.competitor, model=model, warn=False)
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    unembedding = output_embedding(model)
    target = torch.tensor([spec.target_id])
    instrument = Instrument(unembedding, spec.target_id, spec.competitor_id, config)
    cheap = Instrument(unembedding, spec.target_id, spec.competitor_id, replace(config, spectral_topk=0))

    def plain() -> None:
        _, loss = forward_loss(model, spec.input_ids, target)
        update(loss, optimizer)

    readout_times: list[float] = []

    def instrumented() -> None:  # exactly the runner's step
        logits, loss = forward_loss(model, spec.input_ids, target)
        started = time.perf_counter()
        pending = instrument.observe(logits)
        blocking = time.perf_counter() - started
        update(loss, optimizer)
        started = time.perf_counter()
        instrument.record(pending, len(instrument.rows), config.lr)
        readout_times.append(blocking + time.perf_counter() - started)

    def no_spectrum() -> None:  # --spectral-topk 0: Φ, signal, drag, ranks; no purity/entropy
        logits, loss = forward_loss(model, spec.input_ids, target)
        pending = cheap.observe(logits)
        update(loss, optimizer)
        cheap.record(pending, len(cheap.rows), config.lr)

    def naive() -> None:
        logits, loss = forward_loss(model, spec.input_ids, target)
        naive_readout(logits, unembedding, spec.target_id, spec.competitor_id)
        update(loss, optimizer)

    variants = {"plain": plain, "instrumented": instrumented, "no_spectrum": no_spectrum, "naive": naive}
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            started = time.perf_counter()
            variants[name]()
            elapsed = time.perf_counter() - started
            if round_index >= warmup:
                times[name].append(elapsed)
    ratios = {
        name: [t / p for t, p in zip(times[name], times["plain"], strict=True)]
        for name in ("instrumented", "no_spectrum", "naive")
    }
    readout_times = readout_times[warmup:]
    plain_median = statistics.median(times["plain"])
    instrument.close()
    cheap.close()
    return {
        "mode": mode,
        "rounds": rounds,
        "topk_used": instrument.rows[-1]["topk"],
        "median_readout_s": statistics.median(readout_times),
        # The direct measure: the time the readout blocks the training loop (observe + waiting for
        # the spectrum after the update), over the plain step time.
        "overhead_readout_direct": statistics.median(readout_times) / plain_median,
        "median_step_s": {name: statistics.median(v) for name, v in times.items()},
        "overhead_instrumented": statistics.median(ratios["instrumented"]) - 1,
        "overhead_no_spectrum": statistics.median(ratios["no_spectrum"]) - 1,
        "overhead_naive": statistics.median(ratios["naive"]) - 1,
        "overhead_instrumented_quartiles": [q - 1 for q in statistics.quantiles(ratios["instrumented"], n=4)],
        "step_times_s": times,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    base, tokenizer = load_model(args.model)
    results = []
    for mode in ("full", "lora"):
        result = bench_mode(base, tokenizer, mode, args.rounds, args.warmup)
        results.append(result)
        print(
            f"{mode:5s} plain {result['median_step_s']['plain'] * 1000:7.1f} ms/step   "
            f"readout {result['median_readout_s'] * 1000:5.1f} ms = "
            f"{result['overhead_readout_direct'] * 100:4.1f}% of a step   "
            f"paired step ratio +{result['overhead_instrumented'] * 100:5.1f}%   "
            f"without spectrum +{result['overhead_no_spectrum'] * 100:5.1f}%   "
            f"naive full-vocabulary ρ +{result['overhead_naive'] * 100:6.1f}%"
        )
    write_json_atomic(
        Path(args.out),
        {
            "benchmark": "overhead",
            "command": "python benchmarks/overhead.py " + " ".join(sys.argv[1:]),
            "model": args.model,
            "context": "shame",
            "target_overhead": 0.05,
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "versions": versions(),
            "results": results,
        },
    )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
