"""A quiet progress line for long steps (compiles): elapsed seconds on stderr, updated in place
on a terminal and every few seconds otherwise, so a minute-long compile never looks hung."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    def __init__(self, label: str, *, prefix: str = "", stream=None, after: float = 2.0, every: float = 10.0):
        self.prefix = prefix  # what every label of a long step starts with (a pass's name)
        self.label = prefix + label
        self.stream = stream or sys.stderr
        self.after = after  # say nothing for steps shorter than this
        self.every = every if not self._tty() else 0.5
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.start = 0.0
        self.shown = False

    def say(self, text: str) -> None:
        """Show ``text`` (after the prefix) from now on: which stage of a long step runs."""
        self.label = self.prefix + text

    def _tty(self) -> bool:
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def __enter__(self) -> "Progress":
        self.start = time.perf_counter()
        self._thread.start()
        return self

    def _loop(self) -> None:
        if self._stop.wait(self.after):
            return
        while True:
            self._show(f"{self.label} ... {time.perf_counter() - self.start:.0f} s")
            if self._stop.wait(self.every):
                return

    def _show(self, text: str, end: bool = False) -> None:
        self.shown = True
        if self._tty():
            self.stream.write("\r\033[K" + text + ("\n" if end else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __exit__(self, exc_type, *_) -> None:
        self._stop.set()
        self._thread.join()
        if self.shown:
            status = "done" if exc_type is None else "failed"
            self._show(f"{self.label} ... {status} in {time.perf_counter() - self.start:.1f} s", end=True)
