"""Start-up time: ``import phantomlens`` and ``phantomlens --help`` against a bare interpreter.

Each measurement is a fresh Python process (``sys.executable``), timed from launch to exit. The
three commands run in rounds, in rotating order, so that drift and noise on a shared machine hit
all of them alike; the ratios to the bare interpreter are taken from the medians of one run. A
first, untimed round warms the file cache and the bytecode caches. The heavy libraries each
command leaves in ``sys.modules`` are recorded too, since they are what makes start-up slow.

    python -m benchmarks.startup [--rounds 7]      (or: python benchmarks/startup.py)
writes benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from phantomlens.atomic import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "startup.json"
HEAVY = ("torch", "transformers", "peft", "pandas", "numpy", "matplotlib", "pyarrow")

#: name → the Python arguments of the command it times.
CASES: dict[str, list[str]] = {
    "baseline": ["-c", "pass"],
    "import": ["-c", "import phantomlens"],
    "help": ["-m", "phantomlens.cli", "--help"],
}

# Runs what a case runs, in-process, then prints which heavy modules it loaded (last line, JSON).
_HEAVY_PROBE = """
import json, runpy, sys
args = {args!r}
if args[0] == "-c":
    exec(args[1])
else:
    sys.argv = [args[1], *args[2:]]
    try:
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def time_once(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def heavy_modules(args: list[str]) -> list[str]:
    probe = _HEAVY_PROBE.format(args=args, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(rounds: int) -> dict[str, list[float]]:
    names = list(CASES)
    for name in names:  # warm-up, not recorded
        time_once(CASES[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(CASES[name]))
    return times


def summarise(times: dict[str, list[float]]) -> dict:
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["baseline"]
    return {
        "median_s": {name: round(value, 4) for name, value in medians.items()},
        "ratio_to_baseline": {
            name: round(value / base, 2) for name, value in medians.items() if name != "baseline"
        },
        "over_baseline_s": {
            name: round(value - base, 4) for name, value in medians.items() if name != "baseline"
        },
        "times_s": {name: [round(v, 4) for v in values] for name, values in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="timed launches per command (at least 5)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON result")
    args = parser.parse_args(argv)
    if args.rounds < 5:
        parser.error("--rounds must be at least 5")
    result = {
        "benchmark": "startup",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "rounds": args.rounds,
        "commands": {name: ["python", *case] for name, case in CASES.items()},
        **summarise(measure(args.rounds)),
        "heavy_modules_loaded": {name: heavy_modules(case) for name, case in CASES.items()},
    }
    write_json_atomic(args.out, result)
    medians, ratios = result["median_s"], result["ratio_to_baseline"]
    for name in CASES:
        ratio = f"  ({ratios[name]:.1f}× baseline)" if name in ratios else ""
        loaded = result["heavy_modules_loaded"][name]
        print(f"{name:9} median {medians[name] * 1000:8.1f} ms{ratio}  heavy: {', '.join(loaded) or '-'}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
