"""``optc sweep``: a multi-objective search over pass options, resumable, serial or on Ray.

Optuna proposes points (a grid when the space is small enough to walk whole, NSGA-II otherwise)
and keeps its study in ``RUN_DIR/study.journal`` (Optuna's journal file: appended, never
rewritten). Each point's measurement is stored first in ``RUN_DIR/trials/<key>.json``
(atomically, keyed by the pipeline text), then told to the study; a point already measured —
by this run, an interrupted one, or because the sampler proposed it twice — is read back, never
measured again. A restarted sweep marks the trials its killed predecessor left running as
failed and goes on. The front's files (``front.py``) are rewritten after every point.

Trials run in this process, or with ``workers > 1`` / ``ray_address`` on Ray actors (local by
default), each compiling and timing where it runs, one CPU each.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OptcError
from .front import pareto, write_outputs
from .space import Space
from .trial import TrialResult, TrialRunner, load_result, save_result

__all__ = ["SweepOptions", "SweepReport", "sweep"]

STUDY = "optc-sweep"
GRID_LIMIT = 64  # spaces with at most this many points are walked as a grid


@dataclass
class SweepOptions:
    time_budget: float | None = None  # seconds: no new point starts after this
    trials: int | None = None  # new points this run at most (None: the grid, or until the budget)
    workers: int = 1
    threads: int = 1  # per point: the serial process's (pinned before any runtime starts), or each Ray actor's
    ray_address: str | None = None
    sampler: str = "auto"  # auto | grid | nsga2 | tpe
    seed: int = 0
    dims: dict[str, int] = field(default_factory=dict)  # sizes of symbolic dims for latency
    repeat: int = 20  # timed runs per latency


@dataclass
class SweepReport:
    run_dir: str
    measured: int  # points measured in this run
    reused: int  # points read back from earlier measurements
    failed: int
    total: int  # points in the study
    front: list[dict]
    baseline: TrialResult | None
    seconds: float
    stopped: str  # why the run ended


def _kind(space: Space, options: SweepOptions) -> str:
    kind = options.sampler
    if kind == "auto":
        kind = "grid" if space.size() <= GRID_LIMIT else "nsga2"
    if kind not in ("grid", "nsga2", "tpe"):
        raise OptcError(f"--sampler must be auto, grid, nsga2 or tpe, got {kind!r}")
    return kind


def _sampler(kind: str, space: Space, options: SweepOptions):
    """Optuna's sampler. A grid is walked by enqueuing its points (Optuna's ``GridSampler``
    calls ``Study.stop`` when it runs out, which only works inside ``optimize``); what is asked
    beyond the queue comes from a seeded random sampler."""
    import optuna

    if kind == "grid":
        return optuna.samplers.RandomSampler(seed=options.seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=options.seed, population_size=max(4, min(16, space.size() // 4)))
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=options.seed, multivariate=True)
    raise AssertionError(kind)


def _enqueue_grid(study, space: Space, measured: set[str], seed: int) -> int:
    """Queue every grid point neither measured nor already queued, in a seeded random order (a
    run the time budget cuts short still covers the space evenly); returns how many are left."""
    import random

    import optuna

    waiting_trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    # an enqueued trial keeps its point in system_attrs["fixed_params"] until it is asked
    queued = {space.pipeline(t.system_attrs.get("fixed_params") or t.params) for t in waiting_trials}
    waiting = len(waiting_trials)
    points = space.grid()
    random.Random(seed).shuffle(points)
    for point in points:
        pipeline = space.pipeline(point)
        if pipeline not in measured and pipeline not in queued:
            study.enqueue_trial(point, skip_if_exists=False)
            queued.add(pipeline)
            waiting += 1
    return waiting


def _check_run_dir(run_dir: Path, meta: dict) -> None:
    """A run folder holds one sweep: resuming needs the same model, target, space and dims."""
    from ..fileio import atomic_path

    path = run_dir / "sweep.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise OptcError(f"{path} is damaged ({e}): use a new run folder") from None
        diff = [k for k in ("model", "target", "space", "dims", "eval", "threads") if old.get(k) != meta.get(k)]
        if diff:
            raise OptcError(f"{run_dir} holds a sweep with another {', '.join(diff)}: resume it with the same settings, "
                            "or use a new run folder")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        raise OptcError(f"{run_dir} exists and is not an optc sweep folder: not writing into it")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(meta, indent=1))


def _fail_stale_trials(study) -> int:
    import optuna

    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for t in stale:
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    return len(stale)


class _Serial:
    """Runs points one after another in this process."""

    def __init__(self, make_runner: Callable[[], TrialRunner]) -> None:
        self.runner = make_runner()
        self.capacity = 1
        self.pending: list[tuple[object, str]] = []

    def submit(self, token, pipeline: str) -> None:
        self.pending.append((token, pipeline))

    def next_done(self) -> tuple[object, TrialResult]:
        token, pipeline = self.pending.pop(0)
        return token, self.runner.run(pipeline)

    def close(self) -> None:
        pass


class _RayPool:
    """Runs points on Ray actors (``threads`` CPUs each), returns them as they finish."""

    def __init__(self, make_args: dict, workers: int, address: str | None, threads: int = 1) -> None:
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            kw = {"address": address} if address else {"num_cpus": workers * threads}
            try:
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise OptcError(f"cannot start or reach Ray{' at ' + address if address else ''}: "
                                f"{' '.join(str(e).split())[:300]}") from None
        self.ray = ray
        actor = ray.remote(num_cpus=threads)(_RayWorker)
        self.actors = [actor.remote(make_args, threads) for _ in range(workers)]
        self.idle = list(self.actors)
        self.capacity = workers
        self.pending: dict = {}

    def submit(self, token, pipeline: str) -> None:
        a = self.idle.pop()
        self.pending[a.run.remote(pipeline)] = (token, a)

    def next_done(self) -> tuple[object, TrialResult]:
        done, _ = self.ray.wait(list(self.pending), num_returns=1)
        token, a = self.pending.pop(done[0])
        self.idle.append(a)
        return token, TrialResult(**self.ray.get(done[0]))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started:
            self.ray.shutdown()


class _RayWorker:
    def __init__(self, args: dict, threads: int = 1) -> None:
        from ..benchmark import pin_threads

        pin_threads(threads)  # the CPUs Ray reserved for this actor
        self.runner = TrialRunner(**args)

    def run(self, pipeline: str) -> dict:
        return self.runner.run(pipeline).to_json()


def sweep(model: str, target: str, space: Space, calibration, eval_inputs, run_dir: str | Path,
          options: SweepOptions | None = None, say: Callable[[str], None] | None = None,
          eval_label: str | None = None) -> SweepReport:
    """Sweep ``space`` for ``model`` on ``target`` into ``run_dir`` (see the module doc)."""
    import optuna

    options = options or SweepOptions()
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    t0 = time.monotonic()
    run_dir = Path(run_dir)
    meta = {"model": str(Path(model).resolve()), "target": target, "space": {"base": space.base,
            "dimensions": space.dimensions()}, "dims": options.dims, "eval": eval_label,
            "threads": options.threads}
    _check_run_dir(run_dir, meta)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(run_dir / "study.journal")))
    kind = _kind(space, options)
    study = optuna.create_study(study_name=STUDY, storage=storage, load_if_exists=True,
                                sampler=_sampler(kind, space, options), directions=["maximize", "minimize", "minimize"])
    stale = _fail_stale_trials(study)
    if stale:
        say(f"{stale} point(s) a stopped run left unfinished are measured again")
    dists = {k: optuna.distributions.CategoricalDistribution(v) for k, v in space.dimensions().items()}
    trials_dir = run_dir / "trials"
    runner_args = {"model": model, "target": target, "calibration": calibration, "eval_inputs": eval_inputs,
                   "dims": options.dims, "repeat": options.repeat}
    parallel = options.workers > 1 or options.ray_address is not None
    if parallel:
        pool = _RayPool(runner_args, options.workers, options.ray_address, options.threads)
    else:
        from ..benchmark import pin_threads

        pin_threads(options.threads)  # the latencies are bench's: before this process starts a thread pool
        pool = _Serial(lambda: TrialRunner(**runner_args))
    results: dict[str, TrialResult] = {}
    for t in study.get_trials(deepcopy=False):  # what earlier runs measured
        if t.state == optuna.trial.TrialState.COMPLETE or t.state == optuna.trial.TrialState.FAIL:
            r = load_result(trials_dir, t.user_attrs.get("pipeline", ""))
            if r is not None:
                results[r.pipeline] = r
    base_pipeline = space.base_pipeline()
    baseline = None  # measured again by every run: the speed-ups compare with this machine as it is now
    measured = reused = failed = 0
    stopped = "every point of the space is measured"
    grid_left = _enqueue_grid(study, space, set(results), options.seed) if kind == "grid" else None

    def finish(trial, result: TrialResult) -> None:
        nonlocal failed
        results[result.pipeline] = result
        if result.ok:
            study.tell(trial, [result.fidelity, result.latency_ms, result.size_mb])
        else:
            failed += 1
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        write_outputs(run_dir, list(results.values()), baseline, {**meta, "model": model})

    try:
        if base_pipeline:
            say(f"measuring the uncompressed model ({base_pipeline})")
            pool.submit("baseline", base_pipeline)
            _, baseline = pool.next_done()
            save_result(trials_dir, baseline)
            if base_pipeline in results:
                results[base_pipeline] = baseline
        from tqdm import tqdm

        bar = tqdm(total=options.trials, unit="point", file=sys.stderr, dynamic_ncols=True, leave=True,
                   disable=not sys.stderr.isatty())
        in_flight: dict = {}
        started = 0
        while True:
            out_of_time = options.time_budget is not None and time.monotonic() - t0 >= options.time_budget
            enough = options.trials is not None and started >= options.trials
            exhausted = grid_left == 0
            if out_of_time:
                stopped = "the time budget is spent"
            elif enough:
                stopped = f"{options.trials} point(s) measured"
            while not (out_of_time or enough or exhausted) and len(in_flight) < pool.capacity:
                trial = study.ask(dists)
                pipeline = space.pipeline(trial.params)
                trial.set_user_attr("pipeline", pipeline)
                started += 1
                cached = results.get(pipeline) or load_result(trials_dir, pipeline)
                if cached is not None:
                    reused += 1
                    finish(trial, cached)
                else:
                    in_flight[trial.number] = trial
                    pool.submit(trial.number, pipeline)
                enough = options.trials is not None and started >= options.trials
                if grid_left is not None:
                    grid_left -= 1
                    exhausted = grid_left == 0
            if not in_flight:
                break
            number, result = pool.next_done()
            save_result(trials_dir, result)
            measured += 1
            finish(in_flight.pop(number), result)
            front = pareto(list(results.values()))
            best = max((r for r in results.values() if r.ok), key=lambda r: r.fidelity, default=None)
            left = "" if options.time_budget is None else f", {max(0, options.time_budget - (time.monotonic() - t0)) / 60:.0f} min left"
            bar.update(1)
            bar.set_postfix_str(f"front {len(front)}" + (f", best cos {best.fidelity:.4f}" if best else "") + left)
            say(f"[{measured}] {result.pipeline}: " + (f"cos {result.fidelity:.5f}, {result.latency_ms:.2f} ms, "
                                                       f"{result.size_mb:.2f} MB" if result.ok else f"no measurement: {result.error}")
                + f" ({result.seconds:.0f} s" + (f", {result.reused_passes} pass(es) reused" if result.reused_passes else "")
                + f"{left})")
        bar.close()
    finally:
        pool.close()
    rows = write_outputs(run_dir, list(results.values()), baseline, {**meta, "model": model}) if results else []
    return SweepReport(str(run_dir), measured, reused, failed, len(study.trials), rows, baseline,
                       time.monotonic() - t0, stopped)
