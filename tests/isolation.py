"""Run optc in a forked child, so a test can observe what a user would: the exit status, a
signal (a crash), a hang, and what was printed — without a crash taking pytest down.

The child is a fork of the test process (imports already loaded: ~10 ms a case, where a fresh
``python -m optc.cli`` costs seconds), its stdout/stderr go to files, and it is killed after
``timeout`` seconds.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass
class Outcome:
    status: int | None  # exit status, None when killed by a signal or the timeout
    signal: int | None  # the signal that ended the child (a crash), if any
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float

    @property
    def crashed(self) -> bool:
        return self.signal is not None and not self.timed_out

    def describe(self) -> str:
        end = (f"timed out after {self.seconds:.0f} s" if self.timed_out else
               f"killed by signal {signal.Signals(self.signal).name}" if self.signal else f"exit {self.status}")
        return f"{end}; stderr: {self.stderr.strip()[-3000 if self.timed_out else -600:]!r}"


def run_isolated(fn: Callable[[], int | None], timeout: float = 120.0, cwd: str | os.PathLike | None = None) -> Outcome:
    """Run ``fn()`` in a forked child; its return value is the exit status."""
    with tempfile.TemporaryDirectory(prefix="optc-iso-") as tmp:
        out_path, err_path = Path(tmp) / "out", Path(tmp) / "err"
        sys.stdout.flush()
        sys.stderr.flush()
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                fd_out = os.open(out_path, os.O_WRONLY | os.O_CREAT)
                fd_err = os.open(err_path, os.O_WRONLY | os.O_CREAT)
                os.dup2(fd_out, 1)
                os.dup2(fd_err, 2)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                if cwd is not None:
                    os.chdir(cwd)
                # A hang shows where it hung: every thread's Python stack, just before the kill.
                faulthandler.dump_traceback_later(max(timeout - 2.0, 0.5), file=sys.stderr)
                result = fn()
                code = 0 if result is None else int(result)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001  (a traceback, printed like an uncaught one)
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        status = sig = None
        timed_out = False
        hung_threads = ""
        while True:
            done, wstatus = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - t0 > timeout:
                hung_threads = _threads(pid)
                os.kill(pid, signal.SIGKILL)
                _, wstatus = os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.01)
        if os.WIFSIGNALED(wstatus):
            sig = os.WTERMSIG(wstatus)
        else:
            status = os.WEXITSTATUS(wstatus)
        err = err_path.read_text(errors="replace")
        if timed_out:  # what the child's threads were doing, and what this (forking) process runs
            err += f"\n[child threads: {hung_threads}; parent threads: {_threads(os.getpid())}]"
        return Outcome(status, sig, timed_out, out_path.read_text(errors="replace"), err, time.monotonic() - t0)


def _threads(pid: int) -> str:
    """``name:state:wchan`` of each native thread of ``pid`` (R = running, S + futex_* = waiting on a lock)."""
    rows = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            name = (task / "comm").read_text().strip()
            state = (task / "stat").read_text().rsplit(")", 1)[1].split()[0]
            wchan = (task / "wchan").read_text().strip()
        except OSError:
            continue
        rows.append(f"{name}:{state}:{wchan}")
    return ", ".join(rows)


def run_cli(argv: Sequence[str], timeout: float = 120.0, cwd: str | os.PathLike | None = None) -> Outcome:
    """``optc ARGV`` in a forked child."""
    from optc.cli import main

    return run_isolated(lambda: main(list(argv)), timeout, cwd)


def assert_user_error_or_success(o: Outcome, what: str) -> None:
    """The promise for any input: exit 0, or exit 2 with one line on stderr — never a signal,
    a hang, or a traceback."""
    assert not o.timed_out, f"{what}: hung ({o.describe()})"
    assert o.signal is None, f"{what}: crashed ({o.describe()})"
    assert "Traceback" not in o.stderr, f"{what}: printed a traceback ({o.describe()})"
    assert o.status in (0, 2), f"{what}: {o.describe()}"
    if o.status == 2:
        errors = [ln for ln in o.stderr.splitlines() if ln.startswith("optc") and "error:" in ln]
        assert len(errors) == 1, f"{what}: not one error line: {o.stderr!r}"
