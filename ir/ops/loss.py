"""Loss ops: ``NegativeLogLikelihoodLoss`` and ``SoftmaxCrossEntropyLoss`` (ONNX opset 13/22).

Both take scores ``[N, C, d1, ..., dk]`` and integer class targets ``[N, d1, ..., dk]``, an
optional per-class weight ``[C]``, a ``reduction`` (none / sum / mean) and an optional
``ignore_index``: targets equal to it contribute nothing (and no weight to the mean). Any
other target outside ``[0, C)`` is an error in every backend, never a read out of bounds.
"""

from __future__ import annotations

from ..checks import dim_text
from ..types import DType, TensorType
from ._common import INT, STRING, A, op, require_float

REDUCTIONS = ("none", "sum", "mean")


def target_out_of_range(classes, ignore_index: int | None) -> str:
    """The run-time check's wording (``ir/checks.py`` style) for a target outside [0, C) that is
    not ``ignore_index``; ``classes`` is the IR dim C."""
    text = f"target out of range [0, {dim_text(classes)})"
    return text if ignore_index is None else f"{text} and not ignore_index {ignore_index}"

_LOSS_ATTRS = {
    "reduction": A(STRING, "mean", "none, sum or mean"),
    "ignore_index": A(INT, None, "a target value that contributes nothing"),
}


def _loss_types(ctx) -> tuple[TensorType, TensorType]:
    """(loss type, scores type) after checking scores, targets and weight agree."""
    require_float(ctx, 0)
    red = ctx.attr("reduction")
    if red not in REDUCTIONS:
        raise ctx.fail(f"reduction must be one of {', '.join(REDUCTIONS)}, got {red!r}")
    if ctx.dtype(1) not in (DType.INT32, DType.INT64):
        raise ctx.fail(f"the target must be int32 or int64, got {ctx.dtype(1).value}")
    x, t = ctx.type(0), ctx.type(1)
    if ctx.has(2):
        if ctx.dtype(2) != x.dtype:
            raise ctx.fail(f"the weight must have the scores' element type {x.dtype.value}, got {ctx.dtype(2).value}")
        w = ctx.shape(2)
        if w is not None and len(w) != 1:
            raise ctx.fail(f"the weight must be 1-D [C], got rank {len(w)}")
        if w is not None and x.shape is not None and len(x.shape) >= 2 and isinstance(w[0], int) \
                and isinstance(x.shape[1], int) and w[0] != x.shape[1]:
            raise ctx.fail(f"the weight has {w[0]} entries for {x.shape[1]} classes")
    if x.shape is not None and len(x.shape) < 2:
        raise ctx.fail(f"the scores must be [N, C, ...] (rank >= 2), got rank {len(x.shape)}")
    if x.shape is not None and t.shape is not None:
        if len(t.shape) != len(x.shape) - 1:
            raise ctx.fail(f"the target must have rank {len(x.shape) - 1} for scores of rank {len(x.shape)}, "
                           f"got rank {len(t.shape)}")
        for i, (a, b) in enumerate(zip((x.shape[0],) + tuple(x.shape[2:]), t.shape)):
            if isinstance(a, int) and isinstance(b, int) and a != b:
                raise ctx.fail(f"target dim {i} is {b}, the scores say {a}")
    if red == "none":
        shape = t.shape
        if shape is not None and x.shape is not None:
            shape = tuple(b if b is not None else a for a, b in zip((x.shape[0],) + tuple(x.shape[2:]), shape))
        return TensorType(x.dtype, shape), x
    return TensorType(x.dtype, ()), x


@op("NegativeLogLikelihoodLoss", ["input", "target", "weight?"], ["loss"], attrs=_LOSS_ATTRS)
def _nll_loss(ctx):
    """loss[n, d...] = -input[n, target[n, d...], d...] * weight[target[n, d...]], then reduced
    (mean divides by the sum of the weights that were picked)."""
    loss, _ = _loss_types(ctx)
    return [loss]


@op("SoftmaxCrossEntropyLoss", ["scores", "labels", "weights?"], ["output", "log_prob?"], attrs=_LOSS_ATTRS)
def _softmax_cross_entropy(ctx):
    """NegativeLogLikelihoodLoss(LogSoftmax(scores, axis=1), labels, weights); the optional
    second output is the log-softmax itself."""
    loss, x = _loss_types(ctx)
    return [loss, x][:max(ctx.num_outputs, 1)]
