"""Output fidelity: how close a compressed model's outputs are to the original's, measured the
same way by the lossy passes (their budgets), ``optc eval`` and the benchmark scripts.

The outputs are compared as *vectors*: for an encoder's hidden states ``[batch, seq, hidden]``
with an attention-mask input, the mask-weighted mean over the sequence (the sentence embedding);
for logits (an output whose name says so) every position's row, with top-1 agreement; otherwise
the rows along the last axis.

Logits ``[batch, seq, vocab]`` of a model that takes token ids ``[batch, seq]`` are also scored
as a language model is: the perplexity of each side on the next token of its own inputs
(positions the attention mask keeps, the last position predicting nothing) — how the field
measures a compressed decoder, beside how far its logits moved.
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
    perplexity_reference: float | None = None  # next-token perplexity (causal-LM logits only)
    perplexity: float | None = None

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        s = f"mean cosine {self.mean_cosine:.4f}, worst {self.worst_cosine:.4f}, rel. error {self.relative_error:.3g}"
        s += f", top-1 agreement {self.top1:.3f}" if self.top1 is not None else ""
        if self.perplexity is not None:
            s += f", perplexity {self.perplexity_reference:.3f} -> {self.perplexity:.3f} ({self.perplexity_change:+.2%})"
        return s + f" ({self.vectors} vectors)"

    @property
    def perplexity_change(self) -> float | None:
        """Relative change of the perplexity (0.03: 3% higher than the reference's)."""
        if self.perplexity is None or not self.perplexity_reference:
            return None
        return self.perplexity / self.perplexity_reference - 1.0


def mask_for(shape, inputs: Mapping[str, np.ndarray], dtype=np.float64) -> np.ndarray | None:
    """The attention-mask input ``[batch, seq]`` matching the leading dims of ``shape``, or None."""
    for name, x in inputs.items():
        if "mask" in name.lower() and np.ndim(x) == 2 and tuple(np.shape(x)) == tuple(shape[:2]):
            return np.asarray(x, dtype=dtype)
    return None


def is_logits(output_name: str) -> bool:
    return "logit" in output_name.lower()


def output_vectors(output_name: str, array: np.ndarray, inputs: Mapping[str, np.ndarray],
                   dtype=np.float64) -> np.ndarray:
    """The vectors an output is compared as (see the module docstring), ``[n, d]`` (float64 unless
    ``dtype`` says otherwise)."""
    a = np.asarray(array, dtype=dtype)
    if a.ndim == 3 and not is_logits(output_name):
        mask = mask_for(a.shape, inputs, dtype)
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
    nll = {"ref": [0.0, 0], "new": [0.0, 0]}
    for ref, new, feed in zip(reference, outputs, inputs, strict=True):
        name = output or next(iter(ref))
        if is_logits(name):
            for side, out in (("ref", ref), ("new", new)):
                scored = next_token_nll(out[name], feed)
                if scored is not None:
                    nll[side][0] += scored[0]
                    nll[side][1] += scored[1]
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
    ppl = {side: float(np.exp(total / count)) if count else None for side, (total, count) in nll.items()}
    return Fidelity(float(cos.mean()), float(cos.min()), rel, top_hits / top_rows if top_rows else None, int(r.shape[0]),
                    ppl["ref"], ppl["new"])


def token_ids(shape, inputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The integer input ``[batch, seq]`` of token ids matching the leading dims of ``shape``
    (``input_ids`` first, then one named like it; any other integer one that is not a mask or
    positions), or None."""
    found = [(name, x) for name, x in inputs.items() if np.ndim(x) == 2 and tuple(np.shape(x)) == tuple(shape[:2])
             and np.issubdtype(np.asarray(x).dtype, np.integer)
             and "mask" not in name.lower() and "position" not in name.lower()]
    found.sort(key=lambda kv: (kv[0] != "input_ids", "ids" not in kv[0].lower()))
    return np.asarray(found[0][1]) if found else None


def next_token_nll(logits: np.ndarray, inputs: Mapping[str, np.ndarray]) -> tuple[float, int] | None:
    """(summed negative log-likelihood, positions) of each next token under causal-LM
    ``logits [batch, seq, vocab]``: position t predicts ``ids[:, t + 1]``, counted where the
    attention mask keeps both; None when the model's inputs hold no token ids or an id is
    outside the vocabulary."""
    a = np.asarray(logits)
    if a.ndim != 3 or a.shape[1] < 2:
        return None
    ids = token_ids(a.shape, inputs)
    if ids is None or ids.min() < 0 or ids.max() >= a.shape[-1]:
        return None
    keep = np.ones(ids.shape, bool)
    mask = mask_for(a.shape, inputs)
    if mask is not None:
        keep = mask != 0
    keep = keep[:, :-1] & keep[:, 1:]
    b, t = np.nonzero(keep)
    if not len(b):
        return None
    target = ids[b, t + 1]
    total = 0.0
    for i in range(0, len(b), 256):  # float64 rows of a 50k vocabulary, a few MB at a time
        rows = a[b[i:i + 256], t[i:i + 256]].astype(np.float64)
        top = rows.max(axis=-1)
        logz = np.log(np.exp(rows - top[:, None]).sum(axis=-1)) + top
        total += float((logz - rows[np.arange(len(rows)), target[i:i + 256]]).sum())
    return total, int(len(b))


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


PROBE_VECTORS = 512
"""About how many output vectors a per-layer sensitivity probe compares. An encoder's set of 32
sentences is 32 vectors; a decoder's set of 8 windows of 128 tokens is 1,024 rows of 49,152
logits, where the probes of SmolLM2's 210 projections took 7.6 s each (a float64 comparison 5 s
of it): cut to 512 rows in float32, 1.6 s. Whole rows are kept (one row may give more), and a
set whose batch or sequence length is fixed by the model is used whole."""


class SensitivityProbe:
    """The input rows per-layer probes run on (the first rows of ``input_sets`` that give about
    ``vectors`` output vectors) and the original's unit output vectors on them, computed once:
    ``loss`` of a candidate graph is one run of it and a float32 cosine — many probes differ from
    the original in one layer each, and their losses are compared with one another, never
    reported."""

    def __init__(self, original: Graph, input_sets: list[Mapping[str, np.ndarray]], output: str | None = None,
                 vectors: int = PROBE_VECTORS):
        from ...ir.interpreter import Interpreter

        run = Interpreter(original)
        self.output = output or original.outputs[0].name
        self.inputs, self.unit_ref = [], []
        free_rows, free_seq = _symbolic_axis(original, 0), _symbolic_axis(original, 1)
        have = 0
        for feed in input_sets:
            if have >= vectors:
                break
            rows = leading_rows(feed) if free_rows else None
            if rows is not None and rows > 1:  # how many vectors a (padded) row gives, from one row
                one = head_rows(feed, 1, trim=False)
                per_row = self._vectors(run(one), one).shape[0]
                feed = head_rows(feed, max(1, min(rows, -(-(vectors - have) // max(per_row, 1)))), trim=free_seq)
            ref = self._vectors(run(feed), feed)
            self.inputs.append(feed)
            self.unit_ref.append(ref)
            have += ref.shape[0]

    def _vectors(self, outputs: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """Unit vectors (zero rows stay zero; a row that is not finite becomes NaN)."""
        v = output_vectors(self.output, outputs[self.output], feed, np.float32)
        n = np.linalg.norm(v.astype(np.float64), axis=-1, keepdims=True)  # float32 norms overflow past ~1e19
        return np.where(n > 0, v / np.maximum(n, 1e-30), np.where(np.isfinite(n), 0.0, np.nan)).astype(np.float32)

    def loss(self, candidate: Graph) -> float:
        """1 - mean cosine of ``candidate``'s output vectors against the original's; a vector
        that is not finite (an overflow) counts as cosine 0, never as agreement."""
        from ...ir.interpreter import Interpreter

        run = Interpreter(candidate)
        cos = []
        for feed, ref in zip(self.inputs, self.unit_ref):
            new = self._vectors(run(feed), feed)
            if new.shape != ref.shape:
                raise ValueError(f"output {self.output!r}: shapes differ ({new.shape} vs {ref.shape})")
            finite = np.isfinite(new).all(-1)
            c = np.where(finite, (np.nan_to_num(new) * ref).sum(-1), 0.0)
            both_zero = finite & ~ref.any(-1) & ~new.any(-1)  # two zero vectors (a ReLU row) agree
            cos.append(np.where(both_zero, 1.0, c))
        return float(1.0 - np.concatenate(cos).astype(np.float64).mean())


def _symbolic_axis(graph: Graph, axis: int) -> bool:
    """Whether every input of rank > ``axis`` has a dim there that is not fixed (a batch or
    sequence length an input set may cut)."""
    return all(v.type.shape is not None and not isinstance(v.type.shape[axis], int)
               for v in graph.inputs if v.type.shape is None or len(v.type.shape) > axis)


def leading_rows(feed: Mapping[str, np.ndarray]) -> int | None:
    """The leading (batch) size every input of a set shares, or None."""
    lead = {np.shape(a)[0] if np.ndim(a) else None for a in feed.values()}
    return lead.pop() if len(lead) == 1 else None


def head_rows(feed: Mapping[str, np.ndarray], rows: int, trim: bool = True) -> dict[str, np.ndarray]:
    """The first ``rows`` rows of an input set whose inputs share their leading (batch) axis
    (``trim``: without the trailing positions none of those rows uses — padding for a longer
    row); a set whose inputs share no leading axis stays whole."""
    n = leading_rows(feed)
    if not n or rows <= 0 or n <= rows:
        return dict(feed)
    cut = {k: np.ascontiguousarray(a[:rows]) for k, a in feed.items()}
    return trim_padding(cut) if trim else cut


def trim_padding(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop the trailing positions no row of a batch uses (a batch padded for its longest
    sentence, cut into smaller ones): the same outputs on the positions that remain. Only where
    another input is as long as the mask (a decoder's mask also covers its cache: left whole)."""
    masks = [(k, a) for k, a in feed.items() if "mask" in k.lower() and np.ndim(a) == 2]
    if len(masks) != 1 or not np.issubdtype(masks[0][1].dtype, np.number):
        return feed
    name, mask = masks[0]
    if not any(k != name and np.shape(a) == mask.shape for k, a in feed.items()):
        return feed
    used = np.flatnonzero(mask.any(axis=0))
    end = int(used[-1]) + 1 if used.size else mask.shape[1]
    if end == mask.shape[1] or not np.all(mask[:, end:] == 0):
        return feed
    seq = mask.shape
    return {k: np.ascontiguousarray(a[:, :end]) if np.ndim(a) == 2 and a.shape == seq else a for k, a in feed.items()}


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
