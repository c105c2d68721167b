"""``optc tune``: the Python entry point, its option parsing and its report.

    optc.tune("model.onnx", "tuning-db", target="x86", trials=64, time_budget="20m",
              buckets="seq=64,128")

The work is ``codegen.tuning`` (MetaSchedule against optc's default schedules, kept per target
in the database folder); ``optc compile --tuning-db DIR`` applies what it kept.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

from .errors import OptcError

__all__ = ["parse_buckets", "parse_duration", "report_table", "tune"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float | None) -> float | None:
    """Seconds from ``90``, ``90s``, ``20m``, ``1.5h`` (``None`` stays ``None``)."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(s|m|min|h)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise OptcError(f"--time-budget must be a positive duration such as 90s, 20m or 1h, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or ""]


def parse_buckets(text: str | None, dims: list[str]) -> list[dict[str, int]]:
    """Shape buckets from ``"seq=32,64,128 batch=1"`` (``;`` or spaces between dims): every
    combination of the listed sizes. A symbolic dim not listed is 1 when its name says batch,
    else 128."""
    listed: dict[str, list[int]] = {}
    for part in re.split(r"[;\s]+", (text or "").strip()):
        if not part:
            continue
        name, eq, sizes = part.partition("=")
        try:
            values = [int(v) for v in sizes.split(",") if v.strip()] if eq else []
        except ValueError:
            values = []
        if not values or min(values) < 1:
            raise OptcError(f"--buckets: expected NAME=SIZE[,SIZE...] with sizes >= 1, got {part!r}")
        if name not in dims:
            raise OptcError(f"--buckets: the model has no symbolic dim {name!r} (it has: {', '.join(dims) or 'none'})")
        listed[name] = sorted(set(values))
    axes = [listed.get(d, [1 if "batch" in d.lower() else 128]) for d in dims]
    return [dict(zip(dims, combo)) for combo in itertools.product(*axes)] if dims else [{}]


def tune(model: str | os.PathLike, db: str | os.PathLike, *, target="x86", passes: str = "default",
         calibration=None, trials: int = 64, time_budget: str | float | None = None, buckets: str | None = None,
         rpc_tracker: str | None = None, rpc_key: str | None = None, say=None):
    """Tune ``model``'s kernels (after the pass pipeline ``passes``) for ``target`` into the
    database folder ``db``; returns a ``codegen.tuning.TuneReport``. Kernels are timed on this
    machine, or with ``rpc_tracker`` (``HOST:PORT`` of a TVM RPC tracker, or of a server) on the
    board registered there under ``rpc_key``."""
    from .api import load_model, optimize
    from .codegen.tuning import TuneOptions
    from .codegen.tuning import tune as run_tune
    from .ir.specialize import symbolic_dims
    from .passes import PassManager
    from .targets import get_target
    from .targets.base import host_problem

    if trials < 1:
        raise OptcError(f"--trials must be at least 1, got {trials}")
    budget = parse_duration(time_budget)
    tgt = get_target(target)
    if tgt.kind != "cpu":
        raise OptcError(f"cannot tune for {tgt.name}: optc tunes CPU kernels only")
    if rpc_key is not None and rpc_tracker is None:
        raise OptcError("--rpc-key goes with --rpc-tracker HOST:PORT")
    problem = host_problem(tgt.describe())
    if problem is not None and rpc_tracker is None:
        raise OptcError(f"cannot tune for {tgt.name} here: {problem} (time its kernels on a board: "
                        "--rpc-tracker HOST:PORT --rpc-key KEY)")
    PassManager.parse(passes)
    db_path = Path(db)
    if db_path.exists() and not db_path.is_dir():
        raise OptcError(f"--db {db_path} is a file, not a folder")
    graph = load_model(model)
    optimize(graph, passes, target=tgt, calibration=calibration)
    sizes = parse_buckets(buckets, symbolic_dims(graph))
    options = TuneOptions(trials=trials, time_budget=budget, buckets=[s for s in sizes if s])
    if rpc_tracker is None:
        return run_tune(graph, tgt, db_path, options, say=say)
    with _board(rpc_tracker, rpc_key, tgt) as device:
        options.device = device
        return run_tune(graph, tgt, db_path, options, say=say)


class _board:
    """An RPC session on the board that times the kernels, checked against the target."""

    def __init__(self, address: str, key: str | None, target) -> None:
        from .codegen.tuning.measure import RemoteKernelDevice
        from .native.remote import connect

        self.remote = connect(address, key)
        arch = (self.remote.info or {}).get("arch")
        if arch is not None and arch != target.arch:
            self.remote.close()
            raise OptcError(f"{self.remote.describe()} is {arch}, but target {target.name} is {target.arch}")
        self.device = RemoteKernelDevice(self.remote)

    def __enter__(self):
        return self.device

    def __exit__(self, *exc) -> None:
        self.remote.close()


def report_table(report) -> str:
    """The per-kernel table of a ``TuneReport``, and the kernel-time gain."""
    rows = [("kernel", "bucket", "calls", "default us", "tuned us", "trials", "kept")]
    for e in sorted(report.kernels, key=lambda e: -e.default_us * e.calls):
        rows.append((e.name, e.bucket or "-", str(e.calls), f"{e.default_us:.1f}",
                     "-" if e.tuned_us is None else f"{e.tuned_us:.1f}", str(e.trials), e.choice))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    total = sum(e.default_us * e.calls for e in report.kernels)
    lines.append(f"kernel time per run: {total / 1e3:.2f} ms with the default schedules, "
                 f"{total * (1 - report.gain()) / 1e3:.2f} ms with the kept choices ({report.gain() * 100:.1f}% less); "
                 f"{report.tuned_now} kernel(s) tuned now, {report.skipped} already in the database, "
                 f"{report.pending} left by the time budget; {report.seconds:.0f} s")
    return "\n".join(lines)
