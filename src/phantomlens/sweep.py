"""Critical-LR sweeps (docs/critical-lr.md): a root search (or bisection) in log-LR, resumable,
local or Ray.

η_c is the smallest peak LR whose run ends in ``success``; η_max the smallest that diverges.
A sweep measures built-in contexts, or the facts of a fact file each trained alone (a fact is then
searched as a context is), or with ``joint`` the whole set trained jointly: η_c(F, q) is the
smallest peak LR at which at least a fraction q of the facts end flipped.
The next LR to try is a pure function of the runs already recorded (``plan``, in
``phantomlens.lrsearch``: root-finding on the runs' final margins, or bisection on their
verdicts), so a sweep that was killed resumes by replaying its records: nothing finished is redone
or lost. Every run's record is written atomically as it completes, so two sweeps on one directory
can at worst duplicate a run, never corrupt a result.

Layout of a sweep directory::

    DIR/sweep.json                                   the SweepConfig
    DIR/runs/<model>/<mode>/<context>/lr=<η>.json    one record per finished run
    DIR/predictions/<model>/<mode>/<context>.json    η̂_c at κ = 1 (the bracket's starting point)
    DIR/critical_lr.parquet, DIR/summary.json        results, rewritten as contexts finish

where <context> is a built-in context's name, a fact's label in a safe form (``subject_key``), or
the fact set's row name (``joint(q=1)``, also in a safe form).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from phantomlens.atomic import check_output_dir, write_bytes_atomic, write_json_atomic
from phantomlens.errors import PhantomLensError, one_line
from phantomlens.lrsearch import Point, lr_key, plan, replay
from phantomlens.results import (
    DIVERGED,
    FAILURE,
    SUCCESS,
    Prediction,
    SweepRunRecord,
    SweepSummary,
    load_prediction,
    load_sweep_record,
    verdict_of,
)
from phantomlens.settings import DEFAULT_LR, RunConfig, SweepConfig

__all__ = ["Sweep", "SweepConfig", "plan", "sweep"]


#: Run settings that may differ between the records of one sweep directory: everything else must match.
PER_RECORD = ("context", "lr", "device")

#: Run settings a record of a known subject may differ in from what this sweep would run now: the
#: fact file's path (its facts are compared by ``facts_sha256``, so a moved file still resumes).
PER_SUBJECT_RECORD = ("lr", "device", "facts")

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


# --- execution ----------------------------------------------------------------------------------


def _model(name: str, device: str):
    from phantomlens.models import load_model_cached, quiet_libraries, resolve_device

    quiet_libraries()
    base, tokenizer = load_model_cached(name)
    return base.to(resolve_device(device)), tokenizer  # in place: the resident copy moves once


def execute(task: dict) -> dict:
    """Run one task in a worker (local process or Ray): a fine-tuning run, or a prediction.

    Warnings are silenced for the task: a worker's stderr goes straight to the user's terminal, and
    what matters (a run's notes, its outcome) is in the record the main process reports."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _execute(task)


def watch_parent(parent: int, interval: float = 1.0) -> None:
    """A worker's guard (run when it starts): exit once the sweep that started it is gone.

    A sweep killed with SIGKILL (or by the OOM killer, or a CI timeout) cannot stop its workers, and
    a worker blocked on its task pipe would otherwise hold a model in memory for good."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(3)

    threading.Thread(target=watch, name="phantomlens-parent-watch", daemon=True).start()


def _execute(task: dict) -> dict:
    import copy

    import torch

    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    from phantomlens.train import finetune

    config = RunConfig.from_dict(task["run"])
    base, tokenizer = _model(config.model, config.device)
    if task["kind"] == "predict":
        return _predict(config, base, tokenizer, optional=task.get("optional", False))
    started = time.perf_counter()
    result = finetune(config, model=copy.deepcopy(base), tokenizer=tokenizer, progress=False)
    wall = time.perf_counter() - started
    return run_record(result, task, wall).to_dict()


def _predict(config: RunConfig, model, tokenizer, optional: bool) -> dict:
    """The κ = 1 prediction; for a fact, its absence is no error (a fact's search then starts at the
    mode's default LR), since not every fact can be predicted."""
    from phantomlens.predict import predict_critical_lr

    try:
        # κ = 1: a sweep's predictions are what calibration fits κ on
        return predict_critical_lr(config, model=model, tokenizer=tokenizer, calibration=False).to_dict()
    except PhantomLensError as exc:
        if not optional:
            raise
        return {"unavailable": one_line(exc)}


def run_record(result, task: dict, wall: float) -> SweepRunRecord:
    """The record of one finished run, judged as its subject asks: a context's or one fact's outcome,
    or (a joint run, ``task["quantile"]`` set) whether at least q of the set's facts ended flipped."""
    run, summary = task["run"], result.summary
    if not hasattr(summary, "facts"):  # a single-token context: the classic run
        record = SweepRunRecord.from_run(summary, result.events, run, wall)
    elif task.get("quantile") is None:
        record = fact_record(summary, result.events, run, wall)
    else:
        record = joint_record(summary, run, wall, task["quantile"])
    return record.replace(facts_sha256=task.get("facts_sha256"))


def _fact_set_fields(summary, run: dict, wall: float) -> dict:
    """What every record of a fact-set run takes from the run as a whole."""
    return {
        "lr": run["lr"],
        "status": summary.status,
        "steps_completed": summary.steps_completed,
        "embeddings_unchanged": summary.embeddings_unchanged,
        "wall_time_s": round(wall, 2),
        "device": summary.device,
        "device_name": getattr(summary, "device_name", None),  # a fact-set summary names none
        "run": dict(run),
        "model": run["model"],
        "fraction_flipped": summary.fraction_flipped,
        "n_flipped": summary.n_flipped,
        "n_facts": summary.n_facts,
    }


def fact_record(summary, events, run: dict, wall: float) -> SweepRunRecord:
    """A run of one fact (several answer tokens, or a chat prompt): that fact's outcome decides."""
    fact = summary.facts[0]
    detail = events.facts[fact.name].outcome_detail
    return SweepRunRecord(
        verdict=verdict_of(fact.outcome),
        **{k: getattr(fact, k) for k in _FROM_FACT},
        drag_change=detail.drag_change,
        signal_max=detail.signal_max,
        **_fact_set_fields(summary, run, wall),
    )


#: What a one-fact run's record copies from that fact's outcome.
_FROM_FACT = (
    "outcome", "silent", "flipped", "flip_step", "flipped_at_end", "margin_initial", "margin_final",
    "loss_initial", "loss_final", "n_jumps", "n_phantom_jumps",
)  # fmt: skip


def joint_record(summary, run: dict, wall: float, quantile: float) -> SweepRunRecord:
    """A joint run: success iff it completed with ≥ q of its facts flipped at the end.

    The per-run fields describe the set through the fact that decides q, the k-th of N facts with
    k = ⌈q·N⌉: the margins are the k-th largest, flipped / flip_step say when k facts had each
    flipped once; the losses are the joint loss; silent says some fact failed silently; the
    outcome of a failure is the commonest outcome of its unflipped facts. Drag and signal have no
    single value for a set (NaN); each fact's are in a fact-set run of its own (``phantomlens run``).
    """
    facts, needed = summary.facts, SweepRunRecord.needed(quantile, summary.n_facts)
    if summary.status == "diverged":
        verdict = DIVERGED
    else:
        verdict = SUCCESS if summary.n_flipped >= needed else FAILURE
    flips = sorted(f.flip_step for f in facts if f.flip_step is not None)
    return SweepRunRecord(
        verdict=verdict,
        outcome={SUCCESS: "success", DIVERGED: "diverged"}.get(verdict) or _commonest_failure(facts),
        silent=bool(summary.silent_failures),
        flipped=len(flips) >= needed,
        flip_step=flips[needed - 1] if len(flips) >= needed else None,
        flipped_at_end=verdict == SUCCESS,
        margin_initial=sorted((f.margin_initial for f in facts), reverse=True)[needed - 1],
        margin_final=sorted((f.margin_final for f in facts), reverse=True)[needed - 1],
        loss_initial=summary.loss_initial,
        loss_final=summary.loss_final,
        drag_change=math.nan,
        signal_max=math.nan,
        n_jumps=sum(f.n_jumps for f in facts),
        n_phantom_jumps=sum(f.n_phantom_jumps for f in facts),
        quantile=quantile,
        **_fact_set_fields(summary, run, wall),
    )


def _commonest_failure(facts) -> str:
    """The outcome most of the facts that did not end flipped had (ties: alphabetical)."""
    failed = [f.outcome for f in facts if not f.flipped_at_end and f.outcome != "success"]
    return max(sorted(set(failed)), key=failed.count) if failed else "kinematic"


def available_cores() -> int:
    """The cores this process may use: OMP_NUM_THREADS when the user set it (so that a sweep beside
    another heavy process can be held to its share), else the CPUs the process is allowed on."""
    try:
        asked = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        asked = 0
    if asked > 0:
        return asked
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class _Backend:
    def __init__(self, config: SweepConfig) -> None:
        self.config = config
        cores = available_cores()
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

            # An interrupted sweep terminates its workers mid-run; the resource tracker, a process
            # started with the pool and with its environment, would then print a leaked-semaphore
            # warning after our one error line. The environment is changed only while it starts.
            quiet = "ignore::UserWarning:multiprocessing.resource_tracker"
            with _environment(
                PYTHONWARNINGS=",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet]))
            ):
                # spawn, not fork: forking a process that has started OpenMP threads can deadlock.
                self._pool = cf.ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=watch_parent,
                    initargs=(os.getpid(),),
                )

    def submit(self, task: dict) -> cf.Future:
        task = {**task, "threads": self.threads}
        if self._pool is not None:
            return self._pool.submit(execute, task)
        return self._remote.remote(task).future()

    def close(self, abort: bool = False) -> None:
        if self._pool is None:
            return
        if abort:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=True)


class Progress:
    """What a sweep says as it goes: one line on stderr per finished run (and per prediction), so a
    sweep of many minutes is never silent, even in a log file; and a tqdm bar on a terminal."""

    def __init__(self, description: str, progress: bool | None, total: int | None) -> None:
        from tqdm.auto import tqdm

        self.lines = progress is not False
        self.total = total  # known for a grid; a search's length depends on its outcomes
        self.runs = 0
        self.started = time.perf_counter()
        self.bar = tqdm(
            desc=description, unit="run", total=total, disable=None if progress is None else not progress
        )

    def say(self, text: str) -> None:
        if self.lines:
            self.bar.write(text, file=sys.stderr)  # above the bar, which is redrawn below it

    def finished(self, what: str, standing: str = "") -> None:
        """A run finished: ``what`` it was (subject, LR, outcome), and how the sweep stands."""
        self.runs += 1
        self.bar.update(1)
        count = f"run {self.runs}" + (f"/{self.total}" if self.total else "")
        elapsed = time.perf_counter() - self.started
        clock = f"{int(elapsed // 60)}:{int(elapsed % 60):02d}"
        self.say(f"{count:<9} {what}  ({', '.join(filter(None, [standing, f'{clock} elapsed']))})")

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


#: The longest directory name a subject keeps before it is shortened (and given a hash).
MAX_KEY = 80


def subject_key(name: str) -> str:
    """A subject's directory name: the name itself when it is a safe file name, else its safe form
    with a short hash of the name, so that two labels never share a directory ("a b" vs "a_b")."""
    safe = _safe(name)[:MAX_KEY]
    if safe == name and not name.startswith("."):
        return name
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def facts_sha256(facts: list) -> str:
    """The facts of a fact file, hashed: what a resumed sweep's records must have been made from."""
    text = json.dumps([f.to_dict() for f in facts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Subject:
    """What one search measures η_c of: a built-in context, one fact trained alone, or a fact set
    trained jointly. ``settings``: the RunConfig fields it sets on each of its runs."""

    name: str  # its row in the results (the ``context`` column)
    key: str  # its directory under runs/ and predictions/
    settings: dict
    prediction: str  # "required" (a failure fails the sweep), "optional" (facts) or "none" (a set)


def subjects(config: SweepConfig) -> tuple[str | None, dict[str, Subject]]:
    """The fact file's hash (None for built-in contexts) and the subjects of a sweep, by name."""
    if config.fact_file is None:
        from phantomlens.contexts import builtin_contexts, get_context
        from phantomlens.models import BUILTIN_MODELS, check_context_for_model

        invalid = getattr(BUILTIN_MODELS.get(config.run.model), "invalid_contexts", ())
        names = config.contexts or [c.name for c in builtin_contexts() if c.name not in invalid]
        names = list(dict.fromkeys(get_context(name).name for name in names))  # each once
        for name in names:  # one named that is invalid for the model: refused before any run
            check_context_for_model(config.run.model, name)
        return None, {n: Subject(n, n, {"context": n}, "required") for n in names}
    from phantomlens.facts import load_facts

    facts = load_facts(config.fact_file)  # a bad file is one error here, before any model loads
    digest = facts_sha256(facts)
    if config.joint:
        name = f"joint(q={config.quantile:g})"
        return digest, {name: Subject(name, subject_key(name), {"facts": config.fact_file}, "none")}
    from phantomlens.contexts import lookup_context

    found = {}
    for fact in facts:
        if lookup_context(fact.prompt) is not None:  # a run would read it as that context's name
            raise PhantomLensError(
                f"{config.fact_file}: the prompt of fact {fact.label!r} is the name of a built-in "
                "context, so a run of it alone would train that context's text; write the prompt out"
            )
        settings = {
            "context": fact.prompt,
            "target": fact.target,
            "competitor": fact.competitor or None,  # none given: the documented rule picks one
            "chat": fact.chat or config.run.chat,
        }
        found[fact.label] = Subject(fact.label, subject_key(fact.label), settings, "optional")
    return digest, found


class Sweep:
    """Drives the per-subject searches; each run is one task on the backend."""

    def __init__(self, config: SweepConfig, out: str | Path) -> None:
        from phantomlens.models import resolve_device

        self.config = config
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise PhantomLensError(f"sweep directory {self.out} is a file; choose another output (out)")
        check_output_dir(self.out, overwrite=True)  # an existing sweep directory is resumed
        self.facts_sha256, self.subjects = subjects(config)
        if config.joint:
            self._snapshot_facts()
        self.contexts = list(self.subjects)  # the subjects' names, in order
        self.quantile = config.quantile if config.joint else None
        self.unpredicted: dict[str, str] = {}  # subject -> why it has no prediction
        resolve_device(config.run.device)  # an unusable device fails here, not in every worker
        model = config.run.model
        self.model_tag = _safe(Path(model).name if os.path.exists(model) else model)

    def _snapshot_facts(self) -> None:
        """Joint runs read the facts from a copy in the sweep directory, named by their hash, so a
        fact file edited while the sweep runs cannot mix two fact sets in one search."""
        from dataclasses import replace

        from phantomlens.atomic import write_bytes_atomic
        from phantomlens.facts import load_facts

        snapshot = self.out / f"facts-{self.facts_sha256[:16]}.jsonl"
        if not snapshot.is_file():
            lines = [json.dumps(f.to_dict(), ensure_ascii=False) for f in load_facts(self.config.fact_file)]
            self.out.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(snapshot, ("\n".join(lines) + "\n").encode())
        if facts_sha256(load_facts(snapshot)) != self.facts_sha256:
            raise PhantomLensError(f"{snapshot} does not hold the facts of {self.config.fact_file}")
        for name, subject in self.subjects.items():
            self.subjects[name] = replace(subject, settings={"facts": str(snapshot)})

    def run_dir(self, context: str) -> Path:
        return self.out / "runs" / self.model_tag / self.config.run.mode / self.subjects[context].key

    def prediction_path(self, context: str) -> Path:
        key = self.subjects[context].key
        return self.out / "predictions" / self.model_tag / self.config.run.mode / f"{key}.json"

    def records(self, context: str) -> dict[float, SweepRunRecord]:
        found = {}
        for path in self.run_dir(context).glob("lr=*.json"):
            record = load_sweep_record(path)
            if path.name != f"lr={lr_key(record.lr):.10g}.json":
                raise PhantomLensError(
                    f"sweep record {path} holds lr {record.lr!r}, not the LR its name says; "
                    "delete it to run that LR again"
                )
            found[lr_key(record.lr)] = record
        return found

    def run_settings(self, context: str, lr: float | None = None) -> dict:
        """The full settings of one run of this sweep (what its record stores under ``run``)."""
        run = self.config.run.replace(**self.subjects[context].settings, lr=lr).to_dict()
        if lr is None:
            run["lr"] = None  # a prediction's task: no LR to resolve
        return run

    def check_compatible(self) -> None:
        """Refuse to add runs to a directory whose records were made with other run settings.

        The records are the evidence (each carries its run's settings), so a missing or damaged
        sweep.json cannot let a resume mix settings.
        """
        shared = _flat(self.config.run.to_dict())
        by_key = {s.key: s for s in self.subjects.values()}
        for path in sorted((self.out / "runs").glob("*/*/*/lr=*.json")):
            record = load_sweep_record(path)
            self._check_facts(record, path)
            subject = by_key.get(path.parent.name)
            if subject is not None:  # compared with what this sweep would run for it now
                now, ignore = _flat(self.run_settings(subject.name)), PER_SUBJECT_RECORD
            else:  # a context this sweep does not search: only the settings all runs share
                now, ignore = shared, PER_RECORD
            before = _flat(record.run)
            changed = [k for k in before if k not in ignore and k in now and before[k] != now[k]]
            if changed:
                what = ", ".join(f"{k}: {before[k]!r} -> {now[k]!r}" for k in changed)
                raise PhantomLensError(
                    f"{self.out} holds runs made with other settings ({what}; e.g. {path.name} of "
                    f"{path.parent.name}); use another --out, or the same settings to resume it"
                )
        self._check_kind()

    def _check_facts(self, record: SweepRunRecord, path: Path) -> None:
        """Refuse records of another fact file, or of another q, or of the other kind of sweep."""
        where = f"e.g. {path.name} of {path.parent.name}"
        if record.facts_sha256 != self.facts_sha256:
            before = "built-in contexts" if record.facts_sha256 is None else "facts of another fact file"
            now = (
                "built-in contexts" if self.facts_sha256 is None else f"the facts of {self.config.fact_file}"
            )
            raise PhantomLensError(
                f"{self.out} holds runs of {before}, not of {now} ({where}); use another --out, "
                "or the same fact file to resume it"
            )
        if record.quantile != self.quantile:
            raise PhantomLensError(
                f"{self.out} holds runs of {_facts_kind(record.quantile)}, not of "
                f"{_facts_kind(self.quantile)} "
                f"({where}); use another --out, or the same --joint/--quantile to resume it"
            )

    def _check_kind(self) -> None:
        from phantomlens.atomic import read_json

        path = self.out / "sweep.json"
        if not path.is_file():
            return
        before = read_json(path, "sweep settings", "delete it to resume from the records alone")
        # A first attempt that ran nothing (its model missing, say) binds the directory to nothing.
        holds_runs = any((self.out / "runs").rglob("lr=*.json"))
        if holds_runs and isinstance(before, dict) and bool(before.get("grid")) != bool(self.config.grid):
            raise PhantomLensError(
                f"{self.out} holds a {'grid' if before.get('grid') else 'search'}, not a "
                f"{'grid' if self.config.grid else 'search'}; use another --out"
            )

    def next_runs(self, context: str, in_flight: set) -> list[float]:
        """LRs to start now: a search runs one at a time per context; a grid runs all at once."""
        records = self.records(context)
        if self.config.grid:
            wanted = sorted({lr_key(lr) for lr in self.config.grid})
            return [lr for lr in wanted if lr not in records and lr not in in_flight]
        if in_flight:
            return []
        step = plan(_points(records), self.start_lr(context), self.config)
        return [] if step.next_lr is None else [step.next_lr]

    def prediction(self, context: str) -> Prediction | None:
        path = self.prediction_path(context)
        if not path.is_file():
            return None
        prediction = load_prediction(path)
        run = self.config.run
        ours = {"mode": run.mode, "optimizer": run.optimizer, "steps": run.steps, "schedule": run.schedule}
        theirs = {key: getattr(prediction, key) for key in ours}
        if theirs != ours:  # a search started from another setup's prediction would say nothing
            differ = [f"{k} {theirs[k]} (this sweep: {ours[k]})" for k in ours if theirs[k] != ours[k]]
            raise PhantomLensError(
                f"{path} was predicted for other run settings: {', '.join(differ)}; delete it to redo it"
            )
        return prediction

    def start_lr(self, context: str) -> float:
        if self.config.start_lr:
            return self.config.start_lr
        eta = _first_guess(self.prediction(context))
        if eta and eta > 0:
            return min(max(eta, self.config.min_lr), self.config.max_lr)
        return DEFAULT_LR[self.config.run.mode]

    def starts(self, context: str) -> list[float]:
        """The LRs a search of ``context`` may have started at: where it starts now first, then
        every variant of its prediction and the mode's default (earlier versions started at
        another variant; a directory made by one replays from its own start)."""
        p = self.prediction(context)
        variants = [p.eta_c_first_order, p.eta_c_simulated, p.eta_c_two_point, p.eta_c_replay] if p else []
        etas = [p.eta_c, *variants] if p else []
        low, high = self.config.min_lr, self.config.max_lr
        found = [self.start_lr(context), *(min(max(e, low), high) for e in etas if e and e > 0)]
        return list(dict.fromkeys(lr_key(lr) for lr in [*found, DEFAULT_LR[self.config.run.mode]]))

    def run(self, progress: bool | None = None) -> pd.DataFrame:
        """Run (or resume) the sweep. ``progress``: None, a line on stderr per finished run and a bar
        when stderr is a terminal; True, both always; False, neither."""
        self.check_compatible()
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out / "sweep.json", self.config.to_dict())
        backend = _Backend(self.config)
        # A grid's runs still to do are known now (a resumed grid skips those recorded); a search's are not.
        total = sum(len(self.next_runs(c, set())) for c in self.contexts) if self.config.grid else None
        bar = Progress(f"sweep {self.model_tag} {self.config.run.mode}", progress, total)
        try:
            self._drive(backend, bar)
        except BaseException:
            backend.close(abort=True)  # an interrupted sweep stops its workers now; finished runs are kept
            raise
        finally:
            bar.close()
            backend.close()
        return self.write_results()

    def done(self) -> int:
        """How many subjects need no more runs."""
        return sum(not self.next_runs(context, set()) for context in self.contexts)

    def _drive(self, backend: _Backend, bar: Progress) -> None:
        """Submit what the records call for, collect results as they finish, until nothing is left."""
        pending: dict[cf.Future, tuple[str, str, float | None]] = {}
        busy: dict[str, set] = {}  # context -> LRs in flight (None: its prediction)
        if not self.config.start_lr and not self.config.grid:
            for context in self.contexts:
                task = self._prediction_task(context)
                if task is not None:
                    pending[backend.submit(task)] = ("predict", context, None)
                    busy[context] = {None}
        while True:
            for context in self.contexts:
                for lr in self.next_runs(context, busy.get(context, set())):
                    task = {
                        "kind": "run",
                        "run": self.run_settings(context, lr),
                        "facts_sha256": self.facts_sha256,
                        "quantile": self.quantile,
                    }
                    pending[backend.submit(task)] = ("run", context, lr)
                    busy.setdefault(context, set()).add(lr)
            if not pending:
                return
            done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
            for future in done:
                kind, context, lr = pending.pop(future)
                busy[context].discard(lr)
                self._store(kind, context, lr, _result(future, kind, context, lr), bar)
            self.write_results()

    def _redo(self, stored: Prediction) -> bool:
        return self.config.refresh_predictions and _lacks_replay(stored)

    def _prediction_task(self, context: str) -> dict | None:
        """The task that predicts ``context``'s η_c at κ = 1, unless it is stored or cannot exist."""
        subject = self.subjects[context]
        stored = self.prediction(context)
        if subject.prediction == "none" or (stored is not None and not self._redo(stored)):
            return None
        run = self.run_settings(context)
        return {"kind": "predict", "run": run, "optional": subject.prediction == "optional"}

    def _store(self, kind: str, context: str, lr: float | None, result: dict, bar: Progress) -> None:
        if kind == "predict" and "unavailable" in result:
            # Not stored: a later version that can predict this fact does so on resume.
            self.unpredicted[context] = result["unavailable"]
            warnings.warn(
                f"phantomlens: no prediction for {context!r} ({result['unavailable']}); "
                f"its search starts at {self.start_lr(context):g}",
                stacklevel=2,
            )
            return
        if kind == "predict":
            prediction = Prediction.from_dict(result)
            prediction.write(self.prediction_path(context))
            eta = _first_guess(prediction)
            said = f"η̂_c(κ=1) = {eta:.3g}" if eta else "no η̂_c"
            bar.say(f"predicted {context}: {said}; its search starts at lr {self.start_lr(context):.3g}")
            return
        record = SweepRunRecord.from_dict(result)
        record.write(self.run_dir(context) / f"lr={lr_key(lr):.10g}.json")
        outcome = record.outcome + (" (silent)" if record.silent else "")
        if record.quantile is not None:
            outcome += f", {record.n_flipped} of {record.n_facts} facts flipped"
        noun = "fact set" if self.config.joint else "fact" if self.config.fact_file else "context"
        subjects = f"{self.done()}/{len(self.contexts)} {noun}s done"
        bar.finished(f"{context}  lr {lr:.3g}  {outcome}", "" if bar.total else subjects)

    def grid_results(self) -> pd.DataFrame:
        """One row per (context, LR) run of a grid: the phase diagram's cells."""
        run = self.config.run
        rows = [
            {
                "model": run.model,
                "context": context,
                "mode": run.mode,
                "lr": lr,
                **{k: getattr(r, k) for k in GRID_FIELDS},
            }
            for context in self.contexts
            for lr, r in sorted(self.records(context).items())
        ]
        return pd.DataFrame(rows, columns=["model", "context", "mode", "lr", *GRID_FIELDS])

    def results(self) -> pd.DataFrame:
        """One row per context: the measured η_c and η_max brackets beside the κ = 1 predictions."""
        run = self.config.run
        rows = []
        for context in self.contexts:
            records = self.records(context)
            points, start = _points(records), self.start_lr(context)
            step = plan(points, start, self.config)
            rows.append(
                {
                    "model": run.model,
                    "context": context,
                    "mode": run.mode,
                    "optimizer": run.optimizer,
                    "schedule": run.schedule,
                    "steps": run.steps,
                    **{k: getattr(step, k) for k in ("eta_c", "bracket_low", "bracket_high", "eta_max")},
                    "eta_max_low": step.eta_max_low,
                    "runs_used": len(records),
                    **_found_by(points, self.starts(context), self.config),
                    "complete": step.next_lr is None,
                    "note": _note(step.note, context in self.unpredicted),
                    **_predicted(self.prediction(context)),
                    "steps_run": int(sum(r.steps_completed for r in records.values())),
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
        rows = table.to_dict(orient="records")
        SweepSummary(config=self.config.to_dict(), complete=complete, results=rows).write(
            self.out / "summary.json"
        )
        return table


def _points(records: dict[float, SweepRunRecord]) -> dict[float, Point]:
    """What the search reads of each run: its verdict and final margin."""
    return {lr: Point.of(record) for lr, record in records.items()}


def _first_guess(prediction: Prediction | None) -> float | None:
    """Where a search starts: the κ = 1 prediction of the most accurate variant there is (replay,
    two-point, then simulated, then the headline's)."""
    return _start_variant(prediction)[1]


def _start_variant(p: Prediction | None) -> tuple[str | None, float | None]:
    """(variant, η̂_c at κ = 1) of the prediction a search starts from."""
    if p is None:
        return None, None
    ranked = [("replay", p.eta_c_replay), ("two-point", p.eta_c_two_point), ("simulated", p.eta_c_simulated)]
    return next(((name, eta) for name, eta in ranked if eta), (p.variant, p.eta_c))


def _found_by(points: dict[float, Point], starts: list[float], config: SweepConfig) -> dict:
    """Which search's path the runs are (``root``, ``bisect``; ``mixed`` when neither's from any
    start, e.g. a directory resumed with the other search) and how many runs its η_c search used
    (None until it is complete, or when mixed)."""
    others = [s for s in ("root", "bisect") if s != config.search]
    for search in [config.search, *others]:
        searched = config.replace(search=search)
        for start in starts:
            used = replay(points, start, searched)
            if used is not None:
                return {"search": search, "runs_eta_c": used}
    incomplete = plan(points, starts[0], config.replace(eta_max=False)).next_lr is not None
    return {"search": config.search if incomplete else "mixed", "runs_eta_c": None}


def _facts_kind(quantile: float | None) -> str:
    if quantile is None:
        return "the facts trained one at a time"
    return f"the facts trained jointly at q = {quantile:g}"


def _note(note: str, unpredicted: bool) -> str:
    return "; ".join(filter(None, [note, "no prediction" if unpredicted else ""]))


def _lacks_replay(prediction: Prediction) -> bool:
    """A prediction stored before the replay variant, for a context the replay applies to (a
    single-token context whose competitor leads and whose margin the first update moves up)."""
    single_token = prediction.eta_c_simulated is not None  # a fact of several tokens has no simulation
    replayable = single_token and prediction.margin_initial < 0 and prediction.margin_velocity > 0
    return replayable and prediction.replay_refreshes is None


def _predicted(prediction: Prediction | None) -> dict:
    """A results row's prediction columns (all None before the prediction is stored)."""
    p = prediction
    return {
        "margin_initial": p and p.margin_initial,
        "margin_velocity": p and p.margin_velocity,
        "schedule_sum": p and p.schedule_sum,
        "eta_c_predicted_kappa1": p and p.eta_c_first_order,  # the name predates the other variants
        "eta_c_predicted_start_kappa1": _start_variant(p)[1],  # where the search starts (κ = 1)
        "prediction_variant": _start_variant(p)[0],
        "eta_c_predicted_sim_kappa1": p and p.eta_c_simulated,
        "eta_c_predicted_two_point_kappa1": p and p.eta_c_two_point,
        "eta_c_predicted_replay_kappa1": p and p.eta_c_replay,
    }


def _flat(run: dict) -> dict:
    """A run-settings dict with its groups' fields at the top level (records of any age compare)."""
    flat = {}
    for key, value in run.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    return flat


def _result(future: cf.Future, kind: str, context: str, lr: float | None) -> dict:
    try:
        return future.result()
    except Exception as exc:  # a worker died (memory, a kill) or a run raised
        what = f"the {kind} of {context}" + (f" at lr {lr:.4g}" if lr else "")
        raise PhantomLensError(
            f"{what} failed in its worker ({one_line(exc)}); finished runs "
            "are kept: rerun the same command to resume"
        ) from None


def sweep(
    config: SweepConfig | None = None, out: str | Path = "sweep", progress: bool | None = None, **overrides
):
    """Run (or resume) a sweep; returns the critical-LR table (also in ``out``/critical_lr.parquet)."""
    config = (config or SweepConfig()).replace(**overrides)
    return Sweep(config, out).run(progress=progress)
