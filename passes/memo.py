"""``PassMemo``: what one pipeline computed that the next pipeline on the same model can reuse.

A compression sweep runs dozens of pipelines that share prefixes and inputs —
``default,prune-heads{ratio=0.25},quantize`` and ``default,prune-heads{ratio=0.25},low-rank{...}``
prune the same heads of the same graph on the same calibration data. The memo keeps two kinds of
results, both keyed by content (``ir/fingerprint.py``), never by object identity:

- **pipeline states**: the graph (and reports) after each lossy pass of a pipeline, keyed by the
  input graph, the context that shaped the passes (target, calibration, budgets, dims, seed, the
  ruin check) and the prefix's pipeline text. ``PassManager.run`` starts a pipeline from the
  longest stored prefix;
- **calibration analyses**: the reference interpreter's outputs and captured activations of a
  graph on an input list (``memoized``), which every lossy pass computes for the graph it
  starts from — the same graph for many trials.

A memo is only consulted while active (``with memo.active():``; ``PassManager.run`` activates
``ctx.memo``), so a one-off compile pays nothing. Cached arrays are read-only: a caller that
writes into what it was handed fails loudly instead of corrupting the next trial. Bounded by
bytes (least recently used first out).
"""

from __future__ import annotations

import contextvars
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..ir.fingerprint import graph_fingerprint, inputs_digest
from ..ir.graph import Graph

__all__ = ["PassMemo", "memoized", "active_memo"]

_ACTIVE: contextvars.ContextVar["PassMemo | None"] = contextvars.ContextVar("optc_pass_memo", default=None)


@dataclass
class PipelineState:
    graph: Graph  # never handed out: callers get clones
    reports: list[dict[str, Any]]
    changed: bool
    teacher: Graph | None  # the pre-lossy graph a later distill trains against, when one was taken


@dataclass
class MemoStats:
    state_hits: int = 0
    state_misses: int = 0
    value_hits: int = 0
    value_misses: int = 0
    evicted: int = 0
    passes_skipped: int = 0


class PassMemo:
    def __init__(self, max_bytes: int = 2 << 30) -> None:
        self.max_bytes = max_bytes
        self.stats = MemoStats()
        self._entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    # -- activation ---------------------------------------------------------------------------
    @contextmanager
    def active(self) -> Iterator["PassMemo"]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    # -- keys ---------------------------------------------------------------------------------
    def inputs_key(self, input_sets: Sequence[Mapping[str, np.ndarray]]) -> str:
        return inputs_digest(input_sets)  # token ids and masks: cheap to hash every time

    # -- calibration analyses -------------------------------------------------------------------
    def value(self, kind: str, graph: Graph, input_sets: Sequence[Mapping[str, np.ndarray]], extra: tuple,
              compute: Callable[[], Any]) -> Any:
        key = ("value", kind, graph_fingerprint(graph), self.inputs_key(input_sets), extra)
        hit = self._get(key)
        if hit is not None:
            self.stats.value_hits += 1
            return hit
        self.stats.value_misses += 1
        result = _frozen(compute())
        self._put(key, result, _nbytes(result))
        return result

    # -- pipeline states ----------------------------------------------------------------------
    def state(self, key: tuple) -> PipelineState | None:
        hit = self._get(("state", *key))
        if hit is None:
            self.stats.state_misses += 1
        else:
            self.stats.state_hits += 1
        return hit

    def store_state(self, key: tuple, state: PipelineState, shared_with: Graph) -> None:
        """Keep ``state``; its size counts the constants it does not share with ``shared_with``
        (the pipeline's input graph: clones share their arrays)."""
        shared = {id(v.const) for v in shared_with.constants.values()}
        size = sum(int(np.asarray(v.const).nbytes) for v in state.graph.constants.values() if id(v.const) not in shared)
        self._put(("state", *key), state, size)

    # -- storage ------------------------------------------------------------------------------
    def _get(self, key: tuple) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def _put(self, key: tuple, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and self._entries:
            _, (_, freed) = self._entries.popitem(last=False)
            self._bytes -= freed
            self.stats.evicted += 1


def active_memo() -> PassMemo | None:
    return _ACTIVE.get()


def memoized(kind: str, graph: Graph, input_sets: Sequence[Mapping[str, np.ndarray]], extra: tuple,
             compute: Callable[[], Any]) -> Any:
    """``compute()``, or what an earlier call with the same graph content, inputs and ``extra``
    returned, while a memo is active."""
    memo = _ACTIVE.get()
    if memo is None:
        return compute()
    return memo.value(kind, graph, input_sets, extra, compute)


def _frozen(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    elif isinstance(value, Mapping):
        for v in value.values():
            _frozen(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _frozen(v)
    return value


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 64
