"""Recurrent layers: ``RNN``, ``GRU`` and ``LSTM``, with ONNX semantics (opset 22).

Every attribute of the ONNX ops is modelled: ``direction`` (forward / reverse /
bidirectional), ``activations`` with ``activation_alpha``/``activation_beta``, ``clip``,
``layout`` (0: time-major ``[T, B, I]``, 1: batch-major ``[B, T, I]``), ``hidden_size``,
``linear_before_reset`` (GRU) and ``input_forget`` (LSTM); inputs ``sequence_lens``,
``initial_h``/``initial_c`` and the LSTM peepholes ``P``.

``recurrent_spec`` resolves a node's attributes once (gate count, directions, the activation
functions of each direction with their alpha/beta) for the interpreter kernel and the lowering,
so both read the attributes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import IRError
from ..schema import InferContext
from ..types import DType, TensorType
from ..schema import AttrKind
from ._common import FLOAT, FLOATS, INT, STRING, A, op

STRINGS = AttrKind.STRINGS

# name (lower case) -> (canonical name, default alpha, default beta); None: takes no such parameter.
ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "relu": ("Relu", None, None),
    "tanh": ("Tanh", None, None),
    "sigmoid": ("Sigmoid", None, None),
    "affine": ("Affine", 1.0, 0.0),
    "leakyrelu": ("LeakyRelu", 0.01, None),
    "thresholdedrelu": ("ThresholdedRelu", 1.0, None),
    "scaledtanh": ("ScaledTanh", 1.0, 1.0),
    "hardsigmoid": ("HardSigmoid", 0.2, 0.5),
    "elu": ("Elu", 1.0, None),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
}

# op -> (gates, default activations of one direction)
_KINDS = {"RNN": (1, ("Tanh",)), "GRU": (3, ("Sigmoid", "Tanh")), "LSTM": (4, ("Sigmoid", "Tanh", "Tanh"))}
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}


@dataclass(frozen=True)
class Activation:
    """One activation function with its parameters (None where it takes none)."""

    name: str
    alpha: float | None = None
    beta: float | None = None


@dataclass(frozen=True)
class RecurrentSpec:
    """A recurrent node's attributes, resolved."""

    op: str
    gates: int
    hidden: int | None
    directions: tuple[str, ...]  # ("forward",), ("reverse",) or ("forward", "reverse")
    activations: tuple[tuple[Activation, ...], ...]  # per direction
    clip: float | None
    layout: int
    linear_before_reset: bool = False
    input_forget: bool = False


def recurrent_spec(op_name: str, attrs: dict[str, Any], hidden: int | None = None) -> RecurrentSpec:
    """Resolve the attributes of an RNN/GRU/LSTM node (IRError for an invalid one)."""
    gates, defaults = _KINDS[op_name]
    direction = attrs["direction"]
    if direction not in _DIRECTIONS:
        raise IRError(f"{op_name}: direction must be forward, reverse or bidirectional, got {direction!r}")
    dirs = ("forward", "reverse") if direction == "bidirectional" else (direction,)
    per_dir = len(defaults)
    names = attrs.get("activations")
    if names is None:
        names = defaults * len(dirs)
    elif len(names) != per_dir * len(dirs):
        raise IRError(f"{op_name}: activations needs {per_dir * len(dirs)} entries for direction {direction}, got {len(names)}")
    alphas = list(attrs.get("activation_alpha") or ())
    betas = list(attrs.get("activation_beta") or ())
    resolved = []
    for name in names:
        entry = ACTIVATIONS.get(str(name).lower())
        if entry is None:
            raise IRError(f"{op_name}: unknown activation {name!r} (known: {', '.join(v[0] for v in ACTIVATIONS.values())})")
        canon, da, db = entry
        # alpha/beta are consumed in order by the activations that take them.
        a = (alphas.pop(0) if alphas else da) if da is not None else None
        b = (betas.pop(0) if betas else db) if db is not None else None
        resolved.append(Activation(canon, a, b))
    acts = tuple(tuple(resolved[d * per_dir:(d + 1) * per_dir]) for d in range(len(dirs)))
    clip = attrs.get("clip")
    if clip is not None and clip < 0:
        raise IRError(f"{op_name}: clip must be non-negative, got {clip}")
    layout = attrs["layout"]
    if layout not in (0, 1):
        raise IRError(f"{op_name}: layout must be 0 or 1, got {layout}")
    h = attrs.get("hidden_size")
    if h is not None and h <= 0:
        raise IRError(f"{op_name}: hidden_size must be positive, got {h}")
    return RecurrentSpec(op_name, gates, h if h is not None else hidden, dirs, acts, clip, layout,
                         bool(attrs.get("linear_before_reset", 0)), bool(attrs.get("input_forget", 0)))


def sequence_lens_out_of_range(steps) -> str:
    """The check message (ir/checks.py wording) for a length outside ``[0, T]``."""
    return f"sequence_lens out of range [0, {steps}]"


def _dim_eq(a, b) -> bool:
    return a is None or b is None or a == b


def _expect(ctx: InferContext, i: int, what: str, want: tuple) -> None:
    if not ctx.has(i):
        return
    s = ctx.shape(i)
    if s is None:
        return
    if len(s) != len(want) or not all(_dim_eq(a, b) for a, b in zip(s, want)):
        shown = ", ".join("?" if d is None else str(d) for d in want)
        raise ctx.fail(f"{what} must be [{shown}], got {ctx.type(i)}")


def _infer(ctx: InferContext) -> list[TensorType]:
    op_name = ctx.op
    float_ins = [0, 1, 2, 3, 5] + ([6, 7] if op_name == "LSTM" else [])
    dts = {ctx.dtype(i) for i in float_ins if ctx.has(i)}
    if len(dts) != 1:
        raise ctx.fail("X, W, R, B, initial states and P must share one element type, got "
                       + ", ".join(sorted(d.value for d in dts)))
    dt = dts.pop()
    if not dt.is_float:
        raise ctx.fail(f"inputs must be float tensors, got {dt.value}")
    if ctx.has(4) and ctx.dtype(4) is not DType.INT32:
        raise ctx.fail(f"sequence_lens must be i32, got {ctx.type(4)}")
    r = ctx.shape(2)
    hidden = r[2] if r is not None and len(r) == 3 and isinstance(r[2], int) else None
    try:
        spec = recurrent_spec(op_name, ctx.attrs, hidden)
    except IRError as e:
        raise ctx.fail(str(e).removeprefix(f"{op_name}: ")) from None
    h, g, nd = spec.hidden, spec.gates, len(spec.directions)
    x = ctx.shape(0)
    if x is not None and len(x) != 3:
        raise ctx.fail(f"X must be 3-D, got {ctx.type(0)}")
    seq, batch, size = (None, None, None) if x is None else ((x[0], x[1], x[2]) if spec.layout == 0 else (x[1], x[0], x[2]))
    gh = None if h is None else g * h
    _expect(ctx, 1, "W", (nd, gh, size))
    _expect(ctx, 2, "R", (nd, gh, h))
    _expect(ctx, 3, "B", (nd, None if gh is None else 2 * gh))
    _expect(ctx, 4, "sequence_lens", (batch,))
    state = (nd, batch, h) if spec.layout == 0 else (batch, nd, h)
    _expect(ctx, 5, "initial_h", state)
    if op_name == "LSTM":
        _expect(ctx, 6, "initial_c", state)
        _expect(ctx, 7, "P", (nd, None if h is None else 3 * h))
    if h is None:
        raise ctx.fail("hidden_size is unknown (no attribute, and R's last dim is not static)")
    y = (seq, nd, batch, h) if spec.layout == 0 else (batch, seq, nd, h)
    return [TensorType(dt, y), TensorType(dt, state), TensorType(dt, state)][:ctx.num_outputs]


_COMMON = {
    "activation_alpha": A(FLOATS, None, "alpha of the activations that take one, in order"),
    "activation_beta": A(FLOATS, None, "beta of the activations that take one, in order"),
    "activations": A(STRINGS, None, "per direction: f (RNN); f, g (GRU); f, g, h (LSTM)"),
    "clip": A(FLOAT, None, "bound on the activations' inputs"),
    "direction": A(STRING, "forward", "forward, reverse or bidirectional"),
    "hidden_size": A(INT, None, "H (R's last dim when absent)"),
    "layout": A(INT, 0, "0: X is [T, B, I]; 1: [B, T, I]"),
}


@op("RNN", ["X", "W", "R", "B?", "sequence_lens?", "initial_h?"], ["Y?", "Y_h?"], attrs=_COMMON)
def _rnn(ctx: InferContext) -> list[TensorType]:
    """Ht = f(Xt W^T + Ht-1 R^T + Wb + Rb)."""
    return _infer(ctx)


@op("GRU", ["X", "W", "R", "B?", "sequence_lens?", "initial_h?"], ["Y?", "Y_h?"],
    attrs={**_COMMON, "linear_before_reset": A(INT, 0, "apply R (and Rb) before multiplying by the reset gate")})
def _gru(ctx: InferContext) -> list[TensorType]:
    """Gates z, r, h (in W/R/B order); Ht = (1 - zt) * ht + zt * Ht-1."""
    return _infer(ctx)


@op("LSTM", ["X", "W", "R", "B?", "sequence_lens?", "initial_h?", "initial_c?", "P?"], ["Y?", "Y_h?", "Y_c?"],
    attrs={**_COMMON, "input_forget": A(INT, 0, "couple the input and forget gates (f = 1 - i)")})
def _lstm(ctx: InferContext) -> list[TensorType]:
    """Gates i, o, f, c (in W/R/B order), peepholes P = [Pi, Po, Pf]."""
    return _infer(ctx)
