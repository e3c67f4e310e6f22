"""Critical-LR sweeps (METHOD.md §9): bracket then bisect in log-LR, resumable, local or Ray.

η_c is the smallest peak LR whose run ends in ``success``; η_max the smallest that diverges.
The next LR to try is a pure function of the runs already recorded (``plan``), so a sweep that
was killed resumes by replaying its records: nothing finished is redone or lost. Every run's
record is written atomically as it completes, so two sweeps on one directory can at worst
duplicate a run, never corrupt a result.

Layout of a sweep directory::

    DIR/sweep.json                                   the SweepConfig
    DIR/runs/<model>/<mode>/<context>/lr=<η>.json    one record per finished run
    DIR/predictions/<model>/<mode>/<context>.json    η̂_c at κ = 1 (the bracket's starting point)
    DIR/critical_lr.parquet, DIR/summary.json        results, rewritten as contexts finish
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from phantomlens.atomic import write_bytes_atomic, write_json_atomic
from phantomlens.config import JsonConfig, option
from phantomlens.errors import PhantomLensError

SUCCESS, FAILURE, DIVERGED = "success", "failure", "diverged"


@dataclass
class SweepConfig(JsonConfig):
    """A critical-LR sweep: which runs, how they are searched, where they execute."""

    model: str = option("smollm2-135m", "model (built-in name, local directory, .gguf or hub id)")
    contexts: list[str] | None = option(None, "built-in context names (default: all built-in contexts)")
    mode: str = option("full", "full or LoRA fine-tuning", choices=("full", "lora"))
    steps: int = option(50, "steps per run (T)")
    schedule: str = option("cosine", "LR schedule", choices=("cosine", "constant"))
    optimizer: str = option("adamw", "optimiser", choices=("adamw", "sgd"))
    seed: int = option(0, "random seed of every run")
    tolerance: float = option(0.01, "stop bisecting when the bracket's high/low ratio is ≤ 1 + tolerance")
    factor: float = option(
        4.0, "bracketing step: multiply or divide the LR by this until the outcome changes"
    )
    start_lr: float | None = option(
        None, "first LR tried (default: the κ = 1 prediction, else the mode's default)"
    )
    min_lr: float = option(1e-10, "never try below this LR")
    max_lr: float = option(10.0, "never try above this LR")
    eta_max: bool = option(True, "also bisect the divergence limit η_max")
    grid: list[float] | None = option(
        None,
        "run exactly these peak LRs on every context (a phase diagram, DIR/grid.parquet) "
        "instead of searching η_c",
    )
    backend: str = option("local", "where runs execute", choices=("local", "ray"))
    workers: int | None = option(None, "parallel runs (default: one per two CPU cores)")
    device: str = option("auto", "where each run executes: auto (CUDA when visible), cpu, cuda, cuda:N")


#: The settings every record of one sweep directory must share.
RUN_SETTINGS = ("model", "mode", "steps", "schedule", "optimizer", "seed")

#: What a grid's table keeps of each run record.
GRID_FIELDS = (
    "verdict",
    "outcome",
    "silent",
    "status",
    "flipped",
    "flip_step",
    "flipped_at_end",
    "steps_completed",
    "margin_initial",
    "margin_final",
    "loss_initial",
    "loss_final",
    "n_jumps",
    "n_phantom_jumps",
)


def lr_key(lr: float) -> float:
    """LRs are compared and named at 10 significant digits, so replays hit the same records."""
    return float(f"{lr:.10g}")


@dataclass
class Plan:
    next_lr: float | None
    eta_c: float | None = None
    bracket_low: float | None = None
    bracket_high: float | None = None
    eta_max: float | None = None
    eta_max_low: float | None = None
    note: str = ""


def plan(records: dict[float, str], start: float, config: SweepConfig) -> Plan:
    """The next LR to run, or the result when the search is complete (pure: replayable)."""
    if not records:
        return Plan(next_lr=lr_key(start))
    tried = sorted(records)
    success = [lr for lr in tried if records[lr] == SUCCESS]
    diverged = [lr for lr in tried if records[lr] == DIVERGED]
    ratio = 1 + config.tolerance

    def propose(lr: float) -> float | None:
        lr = lr_key(lr)
        if lr in records or not (config.min_lr <= lr <= config.max_lr):
            return None
        return lr

    def mid(low: float, high: float) -> float | None:
        return propose(math.sqrt(low * high))

    result = Plan(next_lr=None)
    # Phase 1: η_c, the lowest success, bracketed from below by the highest non-success under it.
    if success:
        high = success[0]
        below = [lr for lr in tried if lr < high]
        if not below:
            nxt = propose(high / config.factor)
            if nxt is not None:
                return Plan(next_lr=nxt)
            result.note = f"succeeds at the lowest LR allowed ({config.min_lr:g})"
            result.eta_c, result.bracket_high = high, high
        else:
            low = below[-1]
            if high / low > ratio and (nxt := mid(low, high)) is not None:
                return Plan(next_lr=nxt)
            result.eta_c, result.bracket_low, result.bracket_high = high, low, high
    elif diverged:
        first_div = diverged[0]
        below = [lr for lr in tried if lr < first_div]
        if not below:
            nxt = propose(first_div / config.factor)
            if nxt is not None:
                return Plan(next_lr=nxt)
            result.note = "diverges at the lowest LR allowed"
        else:
            low = below[-1]
            if first_div / low > ratio and (nxt := mid(low, first_div)) is not None:
                return Plan(next_lr=nxt)  # is there a success between failing and diverging?
            result.note = "no LR below the divergence limit flips within T"
    else:
        nxt = propose(tried[-1] * config.factor)
        if nxt is not None:
            return Plan(next_lr=nxt)
        result.note = f"no success up to the highest LR allowed ({config.max_lr:g})"
    # Phase 2: η_max, the lowest divergence, bracketed by the highest non-diverged run under it.
    if diverged:
        first_div = diverged[0]
        below = [lr for lr in tried if lr < first_div]
        if below and config.eta_max:
            low = below[-1]
            if first_div / low > ratio and (nxt := mid(low, first_div)) is not None:
                return Plan(next_lr=nxt, **_fields(result))
            result.eta_max_low = low
        result.eta_max = first_div
    elif config.eta_max and result.eta_c is not None:
        nxt = propose(tried[-1] * config.factor)
        if nxt is not None:
            return Plan(next_lr=nxt, **_fields(result))
        result.note = (result.note + "; " if result.note else "") + f"no divergence up to {config.max_lr:g}"
    return result


def _fields(result: Plan) -> dict:
    return {k: v for k, v in vars(result).items() if k != "next_lr"}


# --- execution ----------------------------------------------------------------------------------


def _model(name: str, device: str):
    from phantomlens.models import load_model_cached, quiet_libraries, resolve_device

    quiet_libraries()
    base, tokenizer = load_model_cached(name)
    return base.to(resolve_device(device)), tokenizer  # in place: the resident copy moves once


def execute(task: dict) -> dict:
    """Run one task in a worker (local process or Ray): a fine-tuning run, or a prediction."""
    import copy

    import torch

    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    from phantomlens.train import RunConfig, finetune

    base, tokenizer = _model(task["model"], task["run"].get("device", "auto"))
    config = RunConfig(**task["run"])
    if task["kind"] == "predict":
        from phantomlens.predict import predict_critical_lr

        return predict_critical_lr(config, model=base, tokenizer=tokenizer).to_dict()
    started = time.perf_counter()
    result = finetune(config, model=copy.deepcopy(base), tokenizer=tokenizer, progress=False)
    s = result.summary
    detail = result.events["outcome_detail"]
    return {
        "lr": task["run"]["lr"],
        "verdict": SUCCESS
        if s["outcome"] == "success"
        else DIVERGED
        if s["outcome"] == "diverged"
        else FAILURE,
        "outcome": s["outcome"],
        "silent": s["silent"],
        "status": s["status"],
        "flipped": s["flipped"],
        "flip_step": s["flip_step"],
        "flipped_at_end": s["flipped_at_end"],
        "steps_completed": s["steps_completed"],
        "margin_initial": s["margin_initial"],
        "margin_final": s["margin_final"],
        "loss_initial": s["loss_initial"],
        "loss_final": s["loss_final"],
        "drag_change": detail["drag_change"],
        "signal_max": detail["signal_max"],
        "n_jumps": s["n_jumps"],
        "n_phantom_jumps": s["n_phantom_jumps"],
        "embeddings_unchanged": s["embeddings_unchanged"],
        "wall_time_s": round(time.perf_counter() - started, 2),
        "device": s["device"],
        "run": task["run"],
        "model": task["model"],
    }


class _Backend:
    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        cores = os.cpu_count() or 1
        self.workers = config.workers or max(1, cores // 2)
        self.threads = max(1, cores // self.workers)
        if config.backend == "ray":
            try:
                import ray
            except ImportError:
                raise PhantomLensError(
                    "the ray backend needs Ray: pip install 'phantomlens[ray]' (or pip install ray)"
                ) from None
            if not ray.is_initialized():
                ray.init(
                    num_cpus=self.workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={
                        "env_vars": {
                            k: v for k, v in os.environ.items() if k.startswith(("PHANTOMLENS_", "HF_"))
                        }
                    },
                )
            self._remote = ray.remote(num_cpus=1)(execute)
            self._pool = None
        else:
            import multiprocessing

            # spawn, not fork: forking a process that has started OpenMP threads can deadlock.
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, task: dict) -> cf.Future:
        task = {**task, "threads": self.threads}
        if self._pool is not None:
            return self._pool.submit(execute, task)
        return self._remote.remote(task).future()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


class Sweep:
    """Drives the per-context searches; each run is one task on the backend."""

    def __init__(self, config: SweepConfig, out: str | Path) -> None:
        from phantomlens.contexts import builtin_contexts, get_context

        self.config = config
        self.out = Path(out)
        names = config.contexts or [c.name for c in builtin_contexts()]
        self.contexts = [get_context(name).name for name in names]
        if config.steps < 1 or not 0 < config.tolerance < 1 or config.factor <= 1:
            raise PhantomLensError("need --steps ≥ 1, 0 < --tolerance < 1 and --factor > 1")
        if config.grid is not None and not all(math.isfinite(lr) and lr > 0 for lr in config.grid):
            raise PhantomLensError(f"--grid takes positive learning rates, got {config.grid}")
        from phantomlens.models import resolve_device

        resolve_device(config.device)  # an unusable device fails here, not in every worker
        self.model_tag = _safe(Path(config.model).name if os.path.exists(config.model) else config.model)

    def run_dir(self, context: str) -> Path:
        return self.out / "runs" / self.model_tag / self.config.mode / context

    def prediction_path(self, context: str) -> Path:
        return self.out / "predictions" / self.model_tag / self.config.mode / f"{context}.json"

    def records(self, context: str) -> dict[float, dict]:
        import json

        found = {}
        for path in self.run_dir(context).glob("lr=*.json"):
            try:
                record = json.loads(path.read_text())
            except ValueError:
                continue  # cannot happen with atomic writes; ignore rather than trust it
            found[lr_key(record["lr"])] = record
        return found

    def _run_settings(self, context: str, lr: float | None = None) -> dict:
        c = self.config
        run = {
            "context": context,
            "mode": c.mode,
            "steps": c.steps,
            "schedule": c.schedule,
            "optimizer": c.optimizer,
            "seed": c.seed,
            "model": c.model,
            "device": c.device,
        }
        if lr is not None:
            run["lr"] = lr
        return run

    def check_compatible(self) -> None:
        """Refuse to add runs to a directory whose records were made with other run settings."""
        import json

        path = self.out / "sweep.json"
        if not path.is_file():
            return
        try:
            before = json.loads(path.read_text())
        except ValueError:
            return  # written atomically, so this is not ours; the records speak for themselves
        now = self.config.to_dict()
        changed = [k for k in RUN_SETTINGS if k in before and before[k] != now[k]]
        if bool(before.get("grid")) != bool(now["grid"]):
            changed.append("grid (a grid and a search)")
        if changed:
            what = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed if k in now)
            raise PhantomLensError(
                f"{self.out} holds a sweep made with other settings ({what or changed[0]}); "
                "use another --out, or the same settings to resume it"
            )

    def next_runs(self, context: str, in_flight: set) -> list[float]:
        """LRs to start now: a search runs one at a time per context; a grid runs all at once."""
        records = self.records(context)
        if self.config.grid:
            wanted = sorted({lr_key(lr) for lr in self.config.grid})
            return [lr for lr in wanted if lr not in records and lr not in in_flight]
        if in_flight:
            return []
        step = plan({lr: r["verdict"] for lr, r in records.items()}, self.start_lr(context), self.config)
        return [] if step.next_lr is None else [step.next_lr]

    def start_lr(self, context: str) -> float:
        import json

        from phantomlens.train import DEFAULT_LR

        if self.config.start_lr:
            return self.config.start_lr
        path = self.prediction_path(context)
        if path.is_file():
            prediction = json.loads(path.read_text())
            eta = prediction.get("eta_c_simulated") or prediction.get("eta_c")
            if eta and eta > 0:
                return eta
        return DEFAULT_LR[self.config.mode]

    def run(self, progress: bool | None = None) -> pd.DataFrame:
        from tqdm.auto import tqdm

        self.check_compatible()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "sweep.json", self.config.to_dict())
        backend = _Backend(self.config)
        bar = tqdm(
            desc=f"sweep {self.model_tag} {self.config.mode}",
            unit="run",
            disable=None if progress is None else not progress,
        )
        pending: dict[cf.Future, tuple[str, str, float | None]] = {}
        busy: dict[str, set] = {}  # context -> LRs in flight (None: its prediction)
        try:
            if not self.config.start_lr and not self.config.grid:
                for context in self.contexts:
                    if not self.prediction_path(context).is_file():
                        task = {
                            "kind": "predict",
                            "model": self.config.model,
                            "run": self._run_settings(context),
                        }
                        pending[backend.submit(task)] = ("predict", context, None)
                        busy[context] = {None}
            while True:
                for context in self.contexts:
                    for lr in self.next_runs(context, busy.get(context, set())):
                        run = self._run_settings(context, lr)
                        task = {"kind": "run", "model": self.config.model, "run": run}
                        pending[backend.submit(task)] = ("run", context, lr)
                        busy.setdefault(context, set()).add(lr)
                if not pending:
                    break
                done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
                for future in done:
                    kind, context, lr = pending.pop(future)
                    busy[context].discard(lr)
                    try:
                        result = future.result()
                    except Exception as exc:  # a worker died (memory, a kill) or a run raised
                        what = f"the {kind} of {context}" + (f" at lr {lr:.4g}" if lr else "")
                        raise PhantomLensError(
                            f"{what} failed in its worker ({type(exc).__name__}: {exc}); finished runs "
                            "are kept: rerun the same command to resume"
                        ) from None
                    if kind == "predict":
                        write_json_atomic(self.prediction_path(context), result)
                    else:
                        write_json_atomic(self.run_dir(context) / f"lr={lr_key(lr):.10g}.json", result)
                        bar.update(1)
                        bar.set_postfix(context=context, lr=f"{lr:.3g}", outcome=result["outcome"])
                self.write_results()
        finally:
            bar.close()
            backend.close()
        return self.write_results()

    def grid_results(self) -> pd.DataFrame:
        """One row per (context, LR) run of a grid: the phase diagram's cells."""
        rows = []
        for context in self.contexts:
            for lr, r in sorted(self.records(context).items()):
                rows.append(
                    {
                        "model": self.config.model,
                        "context": context,
                        "mode": self.config.mode,
                        "lr": lr,
                        **{k: r.get(k) for k in GRID_FIELDS},
                    }
                )
        return pd.DataFrame(rows, columns=["model", "context", "mode", "lr", *GRID_FIELDS])

    def results(self) -> pd.DataFrame:
        import json

        rows = []
        for context in self.contexts:
            records = self.records(context)
            step = plan({lr: r["verdict"] for lr, r in records.items()}, self.start_lr(context), self.config)
            prediction = {}
            if self.prediction_path(context).is_file():
                prediction = json.loads(self.prediction_path(context).read_text())
            rows.append(
                {
                    "model": self.config.model,
                    "context": context,
                    "mode": self.config.mode,
                    "optimizer": self.config.optimizer,
                    "schedule": self.config.schedule,
                    "steps": self.config.steps,
                    "eta_c": step.eta_c,
                    "bracket_low": step.bracket_low,
                    "bracket_high": step.bracket_high,
                    "eta_max": step.eta_max,
                    "eta_max_low": step.eta_max_low,
                    "runs_used": len(records),
                    "complete": step.next_lr is None,
                    "note": step.note,
                    "margin_initial": prediction.get("margin_initial"),
                    "margin_velocity": prediction.get("margin_velocity"),
                    "schedule_sum": prediction.get("schedule_sum"),
                    "eta_c_predicted_kappa1": prediction.get("eta_c_first_order", prediction.get("eta_c")),
                    "eta_c_predicted_sim_kappa1": prediction.get("eta_c_simulated"),
                    "eta_c_predicted_two_point_kappa1": prediction.get("eta_c_two_point"),
                    "steps_run": int(sum(r["steps_completed"] for r in records.values())),
                }
            )
        return pd.DataFrame(rows)

    def write_results(self) -> pd.DataFrame:
        import io

        if self.config.grid:
            table = self.grid_results()
            name = "grid.parquet"
            wanted = {(c, lr_key(lr)) for c in self.contexts for lr in self.config.grid}
            complete = wanted <= set(zip(table["context"], table["lr"], strict=True))
        else:
            table = self.results()
            name = "critical_lr.parquet"
            complete = bool(table["complete"].all())
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        write_bytes_atomic(self.out / name, buffer.getvalue())
        write_json_atomic(
            self.out / "summary.json",
            {
                "config": self.config.to_dict(),
                "complete": complete,
                "results": table.to_dict(orient="records"),
            },
        )
        return table


def sweep(
    config: SweepConfig | None = None, out: str | Path = "sweep", progress: bool | None = None, **overrides
):
    """Run (or resume) a sweep; returns the critical-LR table (also in ``out``/critical_lr.parquet)."""
    config = SweepConfig(**{**(config.to_dict() if config else {}), **overrides})
    return Sweep(config, out).run(progress=progress)
