"""``optc tune``: MetaSchedule against optc's default schedules, kernel by kernel, kept on disk.

For every kernel of the model at each shape bucket (``workloads.py``), biggest share of the
model's time first:

1. optc's default schedule is built and timed;
2. MetaSchedule searches ``trials`` candidates (XGBoost cost model, evolutionary search; built and
   timed in this process, ``measure.py``), stopping early at the run's deadline;
3. its best candidate is rebuilt the way the artifact builds it, checked against the default's
   outputs on the same data, and timed interleaved with the default (medians of ``rounds``);
4. the verdict — tuned only when it is correct and at least ``min_gain`` faster — is committed to
   the database (``database.py``) before the next kernel starts.

A kernel already in the database with at least ``trials`` trials is skipped, so a killed tune
resumes with the kernel it was on and a repeat on an unchanged model only re-reads the database.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from ...ir import Graph
from .database import KernelEntry, TuningDatabase
from .measure import Evaluator, InProcessBuilder, InProcessRunner, KernelDevice, compile_kernel, cost_model, \
    kernel_arguments, outputs_match, time_kernel
from .workloads import Workload, bucket_label, kernel_module, static_module, workloads

__all__ = ["TuneOptions", "TuneReport", "tune"]

log = logging.getLogger("optc.tune")


@dataclass
class TuneOptions:
    trials: int = 64  # MetaSchedule trials per kernel
    time_budget: float | None = None  # seconds for the whole run (None: no limit)
    buckets: list[dict[str, int]] = field(default_factory=list)  # symbolic dim sizes to tune at ({} = static model)
    min_gain: float = 0.03  # a tuned kernel must be this much faster than the default to be kept
    min_kernel_us: float = 20.0  # kernels taking less per model run (calls x time) are not searched
    rounds: int = 5  # interleaved default/tuned timings for the verdict
    evaluator: Evaluator = field(default_factory=Evaluator)
    seed: int = 0
    device: KernelDevice | None = None  # where kernels are timed (None: this machine; RemoteKernelDevice: RPC)


@dataclass
class TuneReport:
    target: str
    database: str
    kernels: list[KernelEntry]  # this model's kernels (tuned now or before)
    tuned_now: int  # kernels tuned in this run
    skipped: int  # kernels the database already had
    pending: int  # kernels left when the budget ran out
    seconds: float
    untunable: list[str] = field(default_factory=list)  # symbolic-only kernels (optc's schedule, always)

    def gain(self) -> float:
        """Estimated end-to-end kernel time saved (fraction of the default kernels' time): each
        kernel's time times its calls, default vs the kept choice."""
        before = sum(e.default_us * e.calls for e in self.kernels)
        after = sum((e.tuned_us if e.choice == "tuned" else e.default_us) * e.calls for e in self.kernels)
        return 0.0 if before == 0 else (before - after) / before


@derived_object
class _Deadline(PyMeasureCallback):
    """Ends MetaSchedule's search for the task once the run's deadline has passed."""

    def __init__(self, deadline: float | None) -> None:
        super().__init__()
        self.deadline = deadline

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:  # noqa: D102
        if self.deadline is not None and time.monotonic() > self.deadline:
            task_scheduler.terminate_task(task_id)


def _default_schedule(w: Workload, target) -> tvm.IRModule:
    from ..build import schedule_module

    with target.tvm(), tvm.transform.PassContext(opt_level=3):
        mod, _fallback, unscheduled = schedule_module(kernel_module(w.mod["main"]), target)
    if unscheduled:
        raise RuntimeError(f"optc has no schedule for {w.name}")
    return mod


class _quiet_meta_schedule:
    """MetaSchedule logs every task table at INFO to the console; keep its warnings only."""

    def __enter__(self):
        self.logger = logging.getLogger("tvm.s_tir.meta_schedule")
        self.level = self.logger.level
        self.logger.setLevel(logging.WARNING)

    def __exit__(self, *_):
        self.logger.setLevel(self.level)


def _search(w: Workload, target, device: KernelDevice, trials: int, deadline: float | None, seed: int):
    """MetaSchedule's best record for ``w`` (or None), the trials it ran, and why it could not
    search (a schedule rule that fails on the kernel), if it could not."""
    builder = InProcessBuilder(target)
    runner = InProcessRunner(builder, device)
    database = ms.database.MemoryDatabase()
    with tempfile.TemporaryDirectory(prefix="optc-tune-") as work_dir, _quiet_meta_schedule():
        try:
            ms.tune_tir(kernel_module(w.mod["main"]), target.tvm(), work_dir, max_trials_global=trials, num_trials_per_iter=min(trials, 32),
                        builder=builder, runner=runner, database=database, cost_model=cost_model(),
                        measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel(),
                                           _Deadline(deadline)],
                        task_scheduler="round-robin", num_tuning_cores=1, seed=seed)
        except Exception as e:  # noqa: BLE001 — MetaSchedule's rules do not take every kernel optc writes
            lines = [ln for ln in str(e).strip().splitlines() if ln.startswith(("Error message", "ScheduleError"))]
            return None, 0, (lines[-1] if lines else f"{type(e).__name__}")[:200]
    records = database.get_all_tuning_records()
    valid = [r for r in records if r.run_secs]
    best = database.get_top_k(database.commit_workload(kernel_module(w.mod["main"])), 1) if valid else []
    return (best[0] if best else None), len(records), None


def _verdict(w: Workload, target, device: KernelDevice, default_mod, record, trials: int, options: TuneOptions,
             started: float) -> KernelEntry:
    dev = device.dev
    default_lib = device.load(compile_kernel(default_mod, target), target)
    args = kernel_arguments(default_mod["main"], dev, options.seed)
    entry = KernelEntry(w.key, w.name, "", w.calls, 0.0, None, trials, options.trials, "default")
    tuned_lib = None
    if record is None:
        entry.note = "no valid candidate" if trials else "not searched"
    else:
        sch = tvm.s_tir.Schedule(kernel_module(w.mod["main"]))
        record.trace.apply_to_schedule(sch, remove_postproc=False)
        try:
            tuned_lib = device.load(compile_kernel(sch.mod, target), target)
        except Exception as e:  # noqa: BLE001
            entry.note = f"tuned schedule does not build with optc's passes: {str(e).strip().splitlines()[-1:]}"
    if tuned_lib is not None:
        expect = kernel_arguments(default_mod["main"], dev, options.seed)
        got = kernel_arguments(default_mod["main"], dev, options.seed)
        default_lib["main"](*expect)
        tuned_lib["main"](*got)
        wrong = outputs_match(expect, got)
        if wrong is not None:
            entry.note = f"tuned kernel disagrees with the default: {wrong}"
            tuned_lib = None
    d_times, t_times = [], []
    for _ in range(options.rounds):  # interleaved: load changes hit both alike
        d_times.append(statistics.median(time_kernel(default_lib, args, dev, options.evaluator)))
        if tuned_lib is not None:
            t_times.append(statistics.median(time_kernel(tuned_lib, args, dev, options.evaluator)))
    entry.default_us = statistics.median(d_times) * 1e6
    if t_times:
        entry.tuned_us = statistics.median(t_times) * 1e6
        if entry.tuned_us < entry.default_us * (1.0 - options.min_gain):
            entry.choice = "tuned"
        else:
            entry.note = "not faster than the default"
    entry.seconds = time.monotonic() - started
    return entry


def tune(graph: Graph, target, db_dir, options: TuneOptions | None = None,
         say: Callable[[str], None] | None = None) -> TuneReport:
    """Tune ``graph``'s kernels for the optc ``target`` into the database folder ``db_dir``."""
    options = options or TuneOptions()
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    t0 = time.monotonic()
    deadline = None if options.time_budget is None else t0 + options.time_budget
    device = options.device or KernelDevice()
    db = TuningDatabase(db_dir, target, create=True)
    found: dict[str, tuple[str, Workload]] = {}
    untunable: list[str] = []
    for sizes in options.buckets or [{}]:
        label = bucket_label(sizes)
        for w in workloads(static_module(graph, target, sizes), untunable):
            if w.key in found:
                found[w.key][1].calls += w.calls
            else:
                found[w.key] = (label, w)
    todo = [(label, w) for label, w in found.values()
            if w.key not in db.kernels or db.kernels[w.key].budget < options.trials]
    skipped = len(found) - len(todo)
    say(f"{len(found)} kernel(s) at {', '.join(bucket_label(b) or 'static shapes' for b in options.buckets or [{}])}; "
        f"{skipped} already in {db.dir}, {len(todo)} to tune")
    untunable = sorted(set(untunable))
    if untunable:
        say(f"{len(untunable)} kernel(s) keep optc's schedule: their sizes are run-time parameters, which MetaSchedule "
            f"cannot tune ({', '.join(untunable)})")
    # Default schedules first (seconds): then the kernels that take the most time go first.
    defaults = {}
    for label, w in todo:
        mod = _default_schedule(w, target)
        lib = device.load(compile_kernel(mod, target), target)
        secs = time_kernel(lib, kernel_arguments(mod["main"], device.dev, options.seed), device.dev, options.evaluator)
        defaults[w.key] = (mod, statistics.median(secs) * w.calls)
    todo.sort(key=lambda lw: -defaults[lw[1].key][1])
    done = 0
    for i, (label, w) in enumerate(todo):
        if deadline is not None and time.monotonic() >= deadline:
            break
        started = time.monotonic()
        small = defaults[w.key][1] * 1e6 < options.min_kernel_us
        record, trials, why = (None, 0, None) if small else _search(w, target, device, options.trials, deadline, options.seed)
        entry = _verdict(w, target, device, defaults[w.key][0], record, trials, options, started)
        if small:
            entry.note = f"under {options.min_kernel_us:g} us per model run: not searched"
        elif why:
            entry.note = f"MetaSchedule cannot search it: {why}"
        elif trials < options.trials and deadline is not None and time.monotonic() >= deadline:
            entry.budget = trials  # cut short by the time budget: the next run goes on with it
        entry.bucket = label
        db.commit(entry, record if entry.choice == "tuned" else None)
        done += 1
        tuned = "-" if entry.tuned_us is None else f"{entry.tuned_us:.1f} us"
        say(f"[{i + 1}/{len(todo)}] {w.name} ({label or 'static'}, {w.calls} call(s)): default {entry.default_us:.1f} us, "
            f"tuned {tuned} after {trials} trial(s) -> {entry.choice}{'' if not entry.note else ' (' + entry.note + ')'}")
    kernels = [db.kernels[k] for k in found if k in db.kernels]
    return TuneReport(target.name, str(db.dir), kernels, done, skipped, len(todo) - done, time.monotonic() - t0,
                      untunable)
