"""The persistent tuning database: MetaSchedule's JSON records plus optc's verdict per kernel.

    DIR/<target key>/database_workload.json        MetaSchedule JSONDatabase (workloads)
    DIR/<target key>/database_tuning_record.json   MetaSchedule JSONDatabase (the kept records)
    DIR/<target key>/kernels.json                  optc: per kernel, default vs tuned, the choice

One sub-folder per target: MetaSchedule's database ignores the target when it answers a query,
and a schedule tuned for one CPU is no evidence for another. ``kernels.json`` is the commit
point: a kernel is tuned when it is listed there, and only kernels whose choice is ``tuned``
get their record applied at compile time — the default schedule wins every tie. Every write
replaces whole files atomically (temp file, then rename; ``kernels.json`` last), so a killed
tune leaves the database as it was after the last finished kernel.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tvm
import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from ...ir.errors import OptcError
from .workloads import kernel_module

__all__ = ["KernelEntry", "TuningDatabase", "TuningDatabaseError", "target_key"]

KERNELS_FILE = "kernels.json"
FORMAT = 1


class TuningDatabaseError(OptcError):
    """A tuning database folder that cannot be read (or is not one)."""


@dataclass
class KernelEntry:
    key: str  # structural hash of the unscheduled kernel
    name: str  # its name in the module it was found in
    bucket: str  # the shape bucket it was found at ("batch=1,seq=128")
    calls: int  # call sites per model run
    default_us: float  # optc's default schedule, median
    tuned_us: float | None  # MetaSchedule's best, re-measured beside the default; None: no valid candidate
    trials: int  # MetaSchedule trials spent
    budget: int  # the trial budget this verdict answers (a repeat tune with no more skips the kernel)
    choice: str  # "tuned" or "default"
    note: str = ""  # why the default was kept, when it was
    seconds: float = 0.0  # wall time spent on this kernel
    extra: dict = field(default_factory=dict)


def target_key(target) -> str:
    """A folder name for the optc ``target``: readable parts plus a hash of the full TVM target."""
    tt = dict(target.tvm_target)
    blob = json.dumps(tt, sort_keys=True)
    parts = [str(tt.get("kind", "")), str(tt.get("mtriple", "")).split("-")[0], str(tt.get("mcpu", "") or tt.get("arch", ""))]
    readable = "-".join(p for p in parts if p)
    return f"{readable}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


class TuningDatabase:
    """Read and extend ``DIR/<target key>/`` (see the module doc)."""

    def __init__(self, root: str | os.PathLike, target, *, create: bool = False) -> None:
        self.root = Path(root)
        self.target = target
        self.dir = self.root / target_key(target)
        if not create and not self.dir.is_dir():
            if not self.root.exists():
                raise TuningDatabaseError(f"tuning database {self.root} does not exist")
            have = sorted(p.name for p in self.root.iterdir() if (p / KERNELS_FILE).is_file()) if self.root.is_dir() else []
            raise TuningDatabaseError(f"tuning database {self.root} has no records for target {target.name} "
                                      f"({target_key(target)}); it has: {', '.join(have) or 'nothing'}")
        self.kernels: dict[str, KernelEntry] = self._read_kernels()

    # -- reading ------------------------------------------------------------------------------
    def _read_kernels(self) -> dict[str, KernelEntry]:
        path = self.dir / KERNELS_FILE
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            return {k: KernelEntry(**v) for k, v in data["kernels"].items()}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TuningDatabaseError(f"{path} is not an optc tuning database file: {e}") from None

    def _paths(self, folder: Path) -> tuple[Path, Path]:
        return folder / "database_workload.json", folder / "database_tuning_record.json"

    def records(self) -> ms.database.JSONDatabase:
        """MetaSchedule's view of the kept records (read-only use)."""
        wl, tr = self._paths(self.dir)
        return ms.database.JSONDatabase(path_workload=str(wl), path_tuning_record=str(tr), allow_missing=True)

    def tuned_count(self) -> int:
        return sum(1 for e in self.kernels.values() if e.choice == "tuned")

    def buckets(self) -> list[str]:
        """The buckets at which some kernel's tuned schedule won."""
        return sorted({e.bucket for e in self.kernels.values() if e.choice == "tuned"})

    def tuned_schedule(self, func) -> "tvm.s_tir.Schedule | None":
        """The kept tuned schedule of the unscheduled kernel ``func``, when its verdict is
        ``tuned``; ``None`` otherwise."""
        from .workloads import workload_key

        entry = self.kernels.get(workload_key(func))
        if entry is None or entry.choice != "tuned":
            return None
        return self.records().query_schedule(kernel_module(func), self.target.tvm(), workload_name="main")

    # -- writing ------------------------------------------------------------------------------
    def commit(self, entry: KernelEntry, record: "ms.database.TuningRecord | None") -> None:
        """Add (or replace) one kernel's verdict and, when it carries one, its best record."""
        from ...fileio import atomic_path

        self.dir.mkdir(parents=True, exist_ok=True)
        old = self.records()
        keep = [r for r in old.get_all_tuning_records()
                if f"{tvm_ffi.structural_hash(r.workload.mod) & (2**64 - 1):016x}" != entry.key]
        wl, tr = self._paths(self.dir)
        with atomic_path(wl) as tmp_wl, atomic_path(tr) as tmp_tr:
            new = ms.database.JSONDatabase(path_workload=str(tmp_wl), path_tuning_record=str(tmp_tr), allow_missing=True)
            for r in keep + ([record] if record is not None else []):
                w = new.commit_workload(r.workload.mod)
                new.commit_tuning_record(ms.database.TuningRecord(r.trace, w, r.run_secs, r.target, r.args_info))
            # JSONDatabase writes lazily on commit; make sure both files exist even when empty
            tmp_wl.touch()
            tmp_tr.touch()
        self.kernels[entry.key] = entry
        with atomic_path(self.dir / KERNELS_FILE) as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, "target": self.target.describe(),
                                       "kernels": {k: asdict(v) for k, v in sorted(self.kernels.items())}}, indent=1))
