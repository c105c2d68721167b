"""Output fidelity: how close a compressed model's outputs are to the original's, measured the
same way by the lossy passes (their budgets), ``optc eval`` and the benchmark scripts.

The outputs are compared as *vectors*: for an encoder's hidden states ``[batch, seq, hidden]``
with an attention-mask input, the mask-weighted mean over the sequence (the sentence embedding);
for logits (an output whose name says so) every position's row, with top-1 agreement; otherwise
the rows along the last axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Mapping

import numpy as np

from ...ir.graph import Graph


@dataclass(frozen=True)
class Fidelity:
    mean_cosine: float
    worst_cosine: float
    relative_error: float  # ||new - ref|| / ||ref|| over all compared vectors
    top1: float | None  # fraction of rows whose argmax agrees (logits only)
    vectors: int

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        s = f"mean cosine {self.mean_cosine:.4f}, worst {self.worst_cosine:.4f}, rel. error {self.relative_error:.3g}"
        return s + (f", top-1 agreement {self.top1:.3f}" if self.top1 is not None else "") + f" ({self.vectors} vectors)"


def mask_for(shape, inputs: Mapping[str, np.ndarray], dtype=np.float64) -> np.ndarray | None:
    """The attention-mask input ``[batch, seq]`` matching the leading dims of ``shape``, or None."""
    for name, x in inputs.items():
        if "mask" in name.lower() and np.ndim(x) == 2 and tuple(np.shape(x)) == tuple(shape[:2]):
            return np.asarray(x, dtype=dtype)
    return None


def is_logits(output_name: str) -> bool:
    return "logit" in output_name.lower()


def output_vectors(output_name: str, array: np.ndarray, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The vectors an output is compared as (see the module docstring), float64 ``[n, d]``."""
    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 3 and not is_logits(output_name):
        mask = mask_for(a.shape, inputs)
        if mask is not None:
            w = mask[:, :, None]
            return (a * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)
    if a.ndim == 0:
        return a.reshape(1, 1)
    return a.reshape(-1, a.shape[-1])


def compare(reference: Iterable[Mapping[str, np.ndarray]], outputs: Iterable[Mapping[str, np.ndarray]],
            inputs: Iterable[Mapping[str, np.ndarray]], output: str | None = None) -> Fidelity:
    """Fidelity of ``outputs`` against ``reference`` (one output dict per input set), on the
    named output (default: the first)."""
    refs, news = [], []
    top_hits = top_rows = 0
    for ref, new, feed in zip(reference, outputs, inputs, strict=True):
        name = output or next(iter(ref))
        r, n = output_vectors(name, ref[name], feed), output_vectors(name, new[name], feed)
        if r.shape != n.shape:
            raise ValueError(f"output {name!r}: shapes differ ({r.shape} vs {n.shape})")
        refs.append(r)
        news.append(n)
        if is_logits(name):
            top_hits += int((r.argmax(-1) == n.argmax(-1)).sum())
            top_rows += r.shape[0]
    r, n = np.concatenate(refs), np.concatenate(news)
    nr, nn = np.linalg.norm(r, axis=-1), np.linalg.norm(n, axis=-1)
    cos = (r * n).sum(-1) / np.maximum(nr * nn, 1e-30)
    cos[(nr == 0) & (nn == 0)] = 1.0  # two zero vectors (e.g. a ReLU row) agree
    rel = float(np.linalg.norm(n - r) / max(np.linalg.norm(r), 1e-30))
    return Fidelity(float(cos.mean()), float(cos.min()), rel, top_hits / top_rows if top_rows else None, int(r.shape[0]))


def reference_outputs(graph: Graph, input_sets: Iterable[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The reference interpreter's outputs for each input set (reused across the pipelines of a
    sweep while a ``PassMemo`` is active: read-only then)."""
    from ..memo import memoized

    sets = list(input_sets)
    return memoized("outputs", graph, sets, (), lambda: _run(graph, sets))


def _run(graph: Graph, input_sets: list[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    from ...ir.interpreter import Interpreter

    run = Interpreter(graph)
    return [run(feed) for feed in input_sets]


def measure(original: Graph, compressed: Graph, input_sets: list[Mapping[str, np.ndarray]],
            output: str | None = None, reference: list[Mapping[str, np.ndarray]] | None = None) -> Fidelity:
    """Run both graphs in the reference interpreter on ``input_sets`` and compare (``reference``:
    the original's outputs when already known). A candidate is never the same graph twice: only
    the original's outputs are worth remembering."""
    ref = reference if reference is not None else reference_outputs(original, input_sets)
    return compare(ref, _run(compressed, list(input_sets)), input_sets, output)


def held_back(sets: list) -> tuple[list, list]:
    """``(fit sets, held-back sets)`` for a pass that fits something to calibration data: every
    fourth set (the last of two or three) is held back and the result measured on those —
    measured on the data it was fitted to, a fit flatters itself (GPTQ on 32 MiniLM sentences:
    0.989 there, 0.965 held out). Every fourth, so a calibration of short sentences then long
    passages is measured on both. Needs at least two sets."""
    step = min(4, len(sets))
    return [c for i, c in enumerate(sets) if i % step != step - 1], list(sets[step - 1::step])


RUIN_COSINE = 0.8
"""A lossy result whose calibration mean cosine is below this is not a model any budget asked
for: the pass refuses it whatever its options say."""


def refuse_ruin(pass_name: str, fid: Fidelity, inputs: str = "calibration", ctx=None,
                advice: str = "quantize fewer layers (exclude=...) or use a milder setting") -> None:
    """Fail loudly instead of handing back a ruined model — unless ``ctx.recovery_follows`` (a
    later ``distill`` of the same pipeline trains the result and applies this check to its own)
    or the caller turned the check off (``ctx.refuse_ruin``)."""
    if ctx is not None and (ctx.recovery_follows or not ctx.refuse_ruin):
        return
    if fid.mean_cosine < RUIN_COSINE:
        from ..base import PassError

        raise PassError(f"{pass_name}: the result is ruined ({inputs} mean cosine {fid.mean_cosine:.4f} < "
                        f"{RUIN_COSINE}); refusing it — {advice}")
