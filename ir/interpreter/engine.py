"""The interpreter's engine: the kernel registry, dtype plumbing between numpy/torch and the
IR's element types, input checking, and the execution loop.

Torch is the engine (not numpy) so that later passes can run a graph under autograd, e.g. to
measure sensitivities or fine-tune after a lossy rewrite. Kernels receive and return torch
tensors in the *compute representation* of their IR type:

* every IR dtype maps to the torch dtype of the same name, except
* ``u16`` is held as ``int32`` and ``u32`` as ``int64`` (torch barely implements the unsigned
  16/32-bit types); the engine masks such outputs back into range after every node, so kernels
  may compute with wrap-around freely;
* ``u64`` is held as ``int64`` with the same bit pattern. Addition, subtraction, multiplication,
  bitwise ops and shifts are exact, and the ordering ops (comparisons, Max/Min, Clip, ReduceMax/
  Min, ArgMax/ArgMin, TopK) and Cast to float handle values >= 2**63; Div, Mod and the
  float-based reductions (ReduceMean, ReduceL2, ...) of such values, and Cast of floats >= 2**63
  to u64, are not exact;
* the low-precision types (fp8, ``f4e2m1``, ``f8e8m0``, sub-byte integers) are held widened —
  floats as ``float32``, ``i4``/``i2`` as ``int8``, ``u4``/``u2`` as ``uint8`` — and the engine
  rounds (or wraps) such outputs into the type after every node (``interpreter/lowp.py``).
  ``run_torch`` takes and returns torch's own fp8 dtypes; torch has no usable sub-byte or fp4
  dtype, so those inputs are refused there (use ``run`` with ml_dtypes arrays) and those outputs
  come back in their compute representation.

Kernels must never write into their inputs: constants are shared with the graph (zero-copy
``torch.from_numpy``) and inputs are shared with the caller.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import IRError, UnsupportedOpError
from ..graph import Graph, Node, Value
from ..schema import get_schema
from ..symbolic import Monomial
from ..types import DType
from . import lowp

KernelFn = Callable[..., Any]

# -- kernel registry ---------------------------------------------------------------------------
_KERNELS: dict[str, KernelFn] = {}


def kernel(*ops: str) -> Callable[[KernelFn], KernelFn]:
    """Register ``fn(node, *inputs)`` as the kernel of each op in ``ops``.

    The kernel gets the ``Node`` (for its typed attributes and the IR types of its values) and
    one torch tensor per input slot, ``None`` for an absent optional input. It returns one
    tensor or a tuple with at least as many tensors as the node has outputs.
    """

    def wrap(fn: KernelFn) -> KernelFn:
        for name in ops:
            if name in _KERNELS:
                raise ValueError(f"kernel for {name} registered twice")
            _KERNELS[name] = fn
        return fn

    return wrap


def get_kernel(op: str) -> KernelFn | None:
    """The kernel registered for ``op``, or None."""
    return _KERNELS.get(op)


def registered_ops() -> set[str]:
    """Every op that has a kernel."""
    return set(_KERNELS)


# -- dtypes ------------------------------------------------------------------------------------
TORCH_DTYPE: dict[DType, torch.dtype] = {
    DType.FLOAT32: torch.float32,
    DType.FLOAT16: torch.float16,
    DType.BFLOAT16: torch.bfloat16,
    DType.FLOAT64: torch.float64,
    DType.INT8: torch.int8,
    DType.INT16: torch.int16,
    DType.INT32: torch.int32,
    DType.INT64: torch.int64,
    DType.UINT8: torch.uint8,
    DType.UINT16: torch.uint16,
    DType.UINT32: torch.uint32,
    DType.UINT64: torch.uint64,
    DType.BOOL: torch.bool,
    DType.FLOAT8E4M3FN: torch.float8_e4m3fn,
    DType.FLOAT8E4M3FNUZ: torch.float8_e4m3fnuz,
    DType.FLOAT8E5M2: torch.float8_e5m2,
    DType.FLOAT8E5M2FNUZ: torch.float8_e5m2fnuz,
    DType.FLOAT8E8M0: torch.float8_e8m0fnu,
}
"""The torch dtype with the same meaning as an IR dtype (what ``run_torch`` takes and returns;
the sub-byte types and ``f4e2m1`` have none)."""

COMPUTE_DTYPE: dict[DType, torch.dtype] = {
    **TORCH_DTYPE,
    DType.UINT16: torch.int32,
    DType.UINT32: torch.int64,
    DType.UINT64: torch.int64,
    **lowp.COMPUTE,
}
"""The torch dtype kernels see for an IR dtype (see the module docstring)."""

UNSIGNED_MASK: dict[DType, int] = {DType.UINT16: 0xFFFF, DType.UINT32: 0xFFFFFFFF}

_FROM_TORCH = {v: k for k, v in TORCH_DTYPE.items()}


def compute_dtype(dtype: DType) -> torch.dtype:
    return COMPUTE_DTYPE[dtype]


def numpy_to_compute(array: np.ndarray, dtype: DType | None = None) -> torch.Tensor:
    """A numpy array as a tensor in compute representation (zero-copy where the dtype allows)."""
    array = np.asarray(array)
    dtype = dtype or DType.from_numpy(array.dtype)
    if dtype.is_low_precision:
        array = lowp.to_compute(array, dtype)
    elif dtype is DType.BFLOAT16:
        array = array.view(np.int16)
    elif dtype is DType.UINT16:
        array = array.astype(np.int32)
    elif dtype is DType.UINT32:
        array = array.astype(np.int64)
    elif dtype is DType.UINT64:
        array = array.view(np.int64)
    if not array.flags.c_contiguous or not array.dtype.isnative:
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        # Read-only arrays (e.g. memory-mapped weights) are fine: kernels never write inputs.
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(array)
    if dtype is DType.BFLOAT16:
        t = t.view(torch.bfloat16)
    return t


def compute_to_numpy(t: torch.Tensor, dtype: DType) -> np.ndarray:
    """A compute-representation tensor as a numpy array of IR dtype ``dtype``."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if dtype is DType.BFLOAT16:
        return t.contiguous().view(torch.int16).numpy().view(dtype.numpy)
    if dtype.is_low_precision:
        return lowp.from_compute(t, dtype)
    a = t.numpy()
    if dtype in (DType.UINT16, DType.UINT32):
        return a.astype(dtype.numpy)
    if dtype is DType.UINT64:
        return np.ascontiguousarray(a).view(np.uint64)
    return a


def torch_to_compute(t: torch.Tensor, dtype: DType) -> torch.Tensor:
    """A tensor of ``TORCH_DTYPE[dtype]`` in compute representation."""
    if dtype is DType.UINT64:
        return t.contiguous().view(torch.int64)
    if dtype not in TORCH_DTYPE:
        raise IRError(f"element type {dtype.value} has no torch dtype: run such a graph with numpy "
                      f"(ml_dtypes) arrays through Interpreter.run")
    want = COMPUTE_DTYPE[dtype]
    return t if t.dtype == want else t.to(want)


def compute_to_torch(t: torch.Tensor, dtype: DType) -> torch.Tensor:
    """A compute-representation tensor as a tensor of ``TORCH_DTYPE[dtype]``."""
    if dtype is DType.UINT64:
        return t.contiguous().view(torch.uint64)
    want = TORCH_DTYPE.get(dtype, COMPUTE_DTYPE[dtype])  # no torch dtype: the compute one
    return t if t.dtype == want else t.to(want)


# -- input checking (torch-free, shared with the compiled runtime: ir/signature.py) -------------
from ..signature import check_inputs, empty_input_shape, eval_dim, numpy_dtype  # noqa: E402,F401

_check_inputs = check_inputs  # the name the engine used before the runtime shared it


def _numpy_dtype(x: Any) -> DType | None:
    try:
        return DType.from_numpy(np.asarray(x).dtype)
    except TypeError:
        return None


def _torch_dtype(x: torch.Tensor) -> DType | None:
    return _FROM_TORCH.get(x.dtype)


# -- the interpreter ---------------------------------------------------------------------------
class _Step:
    __slots__ = ("node", "fn", "ins", "outs", "free", "out_dtypes")

    def __init__(self, node: Node, fn: KernelFn, ins: list[int], outs: list[int]):
        self.node = node
        self.fn = fn
        self.ins = ins
        self.outs = outs
        self.free: list[int] = []
        self.out_dtypes = [(COMPUTE_DTYPE[v.dtype], UNSIGNED_MASK.get(v.dtype),
                            v.dtype if v.dtype.is_low_precision else None) for v in node.outputs]


class Interpreter:
    """Executes a graph with torch on CPU: the numeric ground truth for passes and codegen.

    An Interpreter is a snapshot of the graph when it was built (kernel dispatch, value
    lifetimes and constant tensors are computed once in ``__init__``); build a new one after
    editing the graph. ``check_types`` verifies after every node that the result matches the
    declared IR type (element type, rank, static dims and symbolic dims bound by the inputs),
    which catches type-inference bugs where they happen.
    """

    def __init__(self, graph: Graph, *, check_types: bool = True):
        self.graph = graph
        self.check_types = check_types
        slot: dict[int, int] = {}

        def slot_of(v: Value) -> int:
            if id(v) not in slot:
                slot[id(v)] = len(slot)
            return slot[id(v)]

        self._input_slots = [(v, slot_of(v)) for v in graph.inputs]
        from ..decoder import empty_cache_dims

        # a decoder runs here with an empty cache too (the whole window computed by the model
        # itself: what calibration measures); compiled modules take no empty inputs
        self._empty_ok = empty_cache_dims(graph)
        self._const_slots: list[tuple[Value, int, torch.Tensor]] = []
        for v in graph.constants.values():
            self._const_slots.append((v, slot_of(v), numpy_to_compute(v.const, v.dtype)))
        self._steps: list[_Step] = []
        last_use: dict[int, int] = {}
        for i, node in enumerate(graph.nodes):
            fn = _KERNELS.get(node.op)
            if fn is None:
                why = "unknown op" if get_schema(node.op) is None else "no interpreter kernel for op"
                raise UnsupportedOpError(f"{why} {node.op!r} (node {node.name})")
            ins = []
            for v in node.inputs:
                if v is None:
                    ins.append(-1)
                    continue
                if id(v) not in slot:
                    raise IRError(f"node {node.name} ({node.op}) uses %{v.name} before it is defined")
                s = slot[id(v)]
                ins.append(s)
                last_use[s] = i
            outs = [slot_of(v) for v in node.outputs]
            for s in outs:
                last_use.setdefault(s, i)  # an output nobody reads is dropped right away
            self._steps.append(_Step(node, fn, ins, outs))
        self._output_slots = []
        for v in graph.outputs:
            if id(v) not in slot:
                raise IRError(f"graph output %{v.name} is not defined")
            self._output_slots.append((v, slot[id(v)]))
        keep = {s for _, s in self._output_slots} | {s for _, s, _ in self._const_slots}
        for s, i in last_use.items():
            if s not in keep:
                self._steps[i].free.append(s)
        self._nslots = len(slot)
        self._const_ptrs = {t.untyped_storage().data_ptr() for _, _, t in self._const_slots if t.numel()}

    # -- public API ---------------------------------------------------------------------------
    def run_torch(self, inputs: Mapping[str, torch.Tensor],
                  constants: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Run on torch tensors of the IR dtypes (``TORCH_DTYPE``); no numpy round trip, so
        gradients flow from outputs to inputs and to ``constants``, which replaces graph
        constants by name (e.g. a weight that requires grad)."""
        for name, t in inputs.items():
            if not isinstance(t, torch.Tensor):
                raise IRError(f"input {name!r}: expected a torch.Tensor, got {type(t).__name__}")
        for v in self.graph.inputs:
            if v.dtype not in TORCH_DTYPE:
                raise IRError(f"input {v.name!r}: element type {v.dtype.value} has no torch dtype; run the graph "
                              f"with numpy (ml_dtypes) arrays through Interpreter.run")
        bindings = _check_inputs(self.graph.inputs, inputs, "run_torch", _torch_dtype, lambda t: tuple(t.shape),
                                 self._empty_ok)
        overrides: dict[str, torch.Tensor] = {}
        for name, t in (constants or {}).items():
            v = self.graph.constants.get(name)
            if v is None:
                raise IRError(f"constant override {name!r}: the graph has no such constant")
            if _torch_dtype(t) is not v.dtype or tuple(t.shape) != v.const.shape:
                raise IRError(f"constant override {name!r}: expected {v.type}, got {t.dtype} {list(t.shape)}")
            overrides[name] = torch_to_compute(t, v.dtype)
        feed = {v.name: self._conform(v, torch_to_compute(inputs[v.name], v.dtype)) for v, _ in self._input_slots}
        env = self._execute(feed, overrides, bindings)
        return {v.name: compute_to_torch(t, v.dtype) for v, t in env}

    def _conform(self, v, t: torch.Tensor) -> torch.Tensor:
        """An empty cache input with the graph's fixed dims (``signature.empty_input_shape``)."""
        shape = empty_input_shape(v.shape, tuple(t.shape), self._empty_ok)
        return t if shape is None or shape == tuple(t.shape) else t.reshape(shape)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on numpy arrays; returns numpy arrays of the declared output dtypes."""
        bindings = _check_inputs(self.graph.inputs, inputs, "run", _numpy_dtype, lambda a: np.shape(a), self._empty_ok)
        feed = {v.name: self._conform(v, numpy_to_compute(np.asarray(inputs[v.name]), v.dtype))
                for v, _ in self._input_slots}
        ptrs = self._const_ptrs | {t.untyped_storage().data_ptr() for t in feed.values() if t.numel()}
        with torch.inference_mode():
            env = self._execute(feed, {}, bindings)
        out: dict[str, np.ndarray] = {}
        for v, t in env:
            if not t.is_contiguous():
                t = t.contiguous()  # a fresh tensor (e.g. the result of an Expand)
            elif t.numel() and t.untyped_storage().data_ptr() in ptrs:
                t = t.clone()  # never hand out a view of a graph constant or of a caller's input
            out[v.name] = compute_to_numpy(t, v.dtype)
        return out

    __call__ = run

    # -- execution ----------------------------------------------------------------------------
    def _execute(self, feed: Mapping[str, torch.Tensor], overrides: Mapping[str, torch.Tensor],
                 bindings: Mapping[str, int]) -> list[tuple[Value, torch.Tensor]]:
        env: list[torch.Tensor | None] = [None] * self._nslots
        for v, s in self._input_slots:
            env[s] = feed[v.name]
        for v, s, t in self._const_slots:
            env[s] = overrides.get(v.name, t)
        check = self.check_types
        for step in self._steps:
            result = _call_kernel(step, [env[s] if s >= 0 else None for s in step.ins])
            for k, s in enumerate(step.outs):
                t = _coerce_output(step, k, result[k])
                if check:
                    _check_shape(step.node, k, t, bindings)
                env[s] = t
            for s in step.free:
                env[s] = None
        return [(v, env[s]) for v, s in self._output_slots]


def evaluate_node(node: Node, inputs: Sequence[np.ndarray | None]) -> list[np.ndarray]:
    """Run one node on numpy operands (None for an absent optional input); returns one array per
    output, of the declared dtypes. This is what constant folding uses: the node's inputs need not
    be constants of its graph, and its declared output types are checked like in a graph run."""
    fn = _KERNELS.get(node.op)
    if fn is None:
        why = "unknown op" if get_schema(node.op) is None else "no interpreter kernel for op"
        raise UnsupportedOpError(f"{why} {node.op!r} (node {node.name})")
    args = []
    for i, a in enumerate(inputs):
        v = node.input(i)
        args.append(None if a is None else numpy_to_compute(np.asarray(a), v.dtype if v is not None else None))
    step = _Step(node, fn, [], [0] * len(node.outputs))
    with torch.inference_mode():
        result = _call_kernel(step, args)
        outs = []
        for k in range(len(node.outputs)):
            t = _coerce_output(step, k, result[k])
            _check_shape(node, k, t, {})
            outs.append(compute_to_numpy(t.contiguous().clone(), node.outputs[k].dtype))
    return outs


def _call_kernel(step: _Step, args: list) -> Sequence[torch.Tensor]:
    node = step.node
    try:
        result = step.fn(node, *args)
    except (IRError, NotImplementedError):
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, ZeroDivisionError) as e:
        raise IRError(f"node {node.name} ({node.op}): {e}") from e
    if not isinstance(result, (tuple, list)):
        result = (result,)
    if len(result) < len(step.outs):
        raise IRError(f"node {node.name} ({node.op}): kernel gave {len(result)} outputs, expected {len(step.outs)}")
    return result


def _coerce_output(step: _Step, k: int, t: torch.Tensor) -> torch.Tensor:
    """Narrow a kernel result to the compute dtype of the declared output type (and mask the
    unsigned types held in wider integers, round the low-precision ones into their type)."""
    want, mask, low = step.out_dtypes[k]
    if low is not None:
        return lowp.round_to(t, low)
    if t.dtype != want:
        t = t.to(want)
    if mask is not None:
        t = t & mask
    return t


def _check_shape(node: Node, k: int, t: torch.Tensor, bindings: Mapping[str, int]) -> None:
    declared = node.outputs[k].shape
    if declared is None:
        return
    got = tuple(t.shape)
    ok = len(got) == len(declared)
    if ok:
        for d, n in zip(declared, got):
            if d is None:
                continue
            want = d if isinstance(d, int) else eval_dim(d, bindings)
            if want is not None and want != n:
                ok = False
                break
    if not ok:
        raise IRError(f"node {node.name} ({node.op}): output {k} has shape {list(got)}, "
                      f"but its type is {node.outputs[k].type} (a type-inference bug or an input "
                      f"that contradicts the graph)")


def run(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute ``graph`` on numpy inputs keyed by input name; returns its outputs keyed by
    output name, as numpy arrays of the declared dtypes. Raises ``IRError`` for a missing or
    unexpected input name, a wrong element type or rank, a static dim mismatch or a symbolic
    dim bound to two different sizes."""
    return Interpreter(graph).run(inputs)


# -- helpers for kernels -----------------------------------------------------------------------
def as_ints(t: torch.Tensor | None) -> list[int] | None:
    """The contents of a small integer tensor (a shape, axes, pads) as Python ints."""
    if t is None:
        return None
    return [int(x) for x in t.detach().reshape(-1).tolist()]


def input_dtype(node: Node, i: int) -> DType:
    """The IR element type of the node's input ``i``."""
    v = node.inputs[i]
    assert v is not None
    return v.dtype


def output_dtype(node: Node, i: int = 0) -> DType:
    """The IR element type of the node's output ``i``."""
    return node.outputs[i].dtype


def normalize_axis(axis: int, rank: int, node: Node | None = None) -> int:
    """A possibly negative axis as an index in ``[0, rank)``; IRError when out of range."""
    if not -rank <= axis < max(rank, 1):
        where = f"node {node.name} ({node.op}): " if node is not None else ""
        raise IRError(f"{where}axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0
