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

    python -m benchmarks.overhead [--rounds 12] [--model smollm2-135m]
writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from phantomlens.atomic import write_json_atomic
from phantomlens.contexts import get_context, resolve
from phantomlens.forward import output_embedding
from phantomlens.models import load_model
from phantomlens.session import make_optimizer, prepare_model, versions
from phantomlens.settings import RunConfig
from phantomlens.train import forward_loss, update
from phantomlens.trajectory import Instrument

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


def interleave(variants: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, list[float]]:
    """Time every variant once per round, in rotating order, keeping the rounds after ``warmup``."""
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            variants[name]()
            elapsed = time.perf_counter() - started
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


class Steps:
    """The four step variants on one model and optimiser (the runner's own code for the readout)."""

    def __init__(self, base, tokenizer, mode: str) -> None:
        ctx = get_context("shame")
        self.config = RunConfig(mode=mode, lr=1e-7)  # tiny LR: weights stay sane for many steps
        self.model = prepare_model(copy.deepcopy(base), self.config)
        self.model.eval()
        self.spec = resolve(tokenizer, ctx.text, ctx.target, ctx.competitor, model=self.model, warn=False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.config, params)
        self.unembedding = output_embedding(self.model)
        self.target = torch.tensor([self.spec.target_id])
        ids = (self.unembedding, self.spec.target_id, self.spec.competitor_id)
        readout = self.config.readout
        self.instrument = Instrument(*ids, readout)
        self.cheap = Instrument(*ids, readout.replace(spectral_topk=0))
        self.readout_times: list[float] = []

    def _forward(self):
        return forward_loss(self.model, self.spec.input_ids, self.target)

    def plain(self) -> None:
        update(self._forward()[1], self.optimizer)

    def instrumented(self) -> None:  # exactly the runner's step
        logits, loss = self._forward()
        started = time.perf_counter()
        pending = self.instrument.observe(logits)
        blocking = time.perf_counter() - started
        update(loss, self.optimizer)
        started = time.perf_counter()
        self.instrument.record(pending, len(self.instrument.rows), self.config.lr)
        self.readout_times.append(blocking + time.perf_counter() - started)

    def no_spectrum(self) -> None:  # --spectral-topk 0: Φ, signal, drag, ranks; no purity/entropy
        logits, loss = self._forward()
        pending = self.cheap.observe(logits)
        update(loss, self.optimizer)
        self.cheap.record(pending, len(self.cheap.rows), self.config.lr)

    def naive(self) -> None:
        logits, loss = self._forward()
        naive_readout(logits, self.unembedding, self.spec.target_id, self.spec.competitor_id)
        update(loss, self.optimizer)

    def close(self) -> None:
        self.instrument.close()
        self.cheap.close()


def bench_mode(base, tokenizer, mode: str, rounds: int, warmup: int) -> dict:
    steps = Steps(base, tokenizer, mode)
    variants = {"plain": steps.plain, "instrumented": steps.instrumented, "no_spectrum": steps.no_spectrum}
    times = interleave({**variants, "naive": steps.naive}, rounds, warmup)
    steps.close()
    ratios = {
        name: [t / p for t, p in zip(times[name], times["plain"], strict=True)]
        for name in ("instrumented", "no_spectrum", "naive")
    }
    readout_times = steps.readout_times[warmup:]
    plain_median = statistics.median(times["plain"])
    return {
        "mode": mode,
        "rounds": rounds,
        "topk_used": steps.instrument.rows[-1]["topk"],
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
            "command": "python -m benchmarks.overhead " + " ".join(sys.argv[1:]),
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
