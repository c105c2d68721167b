"""``torch.export`` → optc IR.

``import_exported_program(ep)`` walks the FX graph of an :class:`torch.export.ExportedProgram` and
builds an :class:`optc.ir.Graph`:

* parameters, buffers and lifted tensor constants become IR constants named by their state-dict
  key (``encoder.layer.0.attention.self.query.weight``); user inputs become graph inputs named
  after the placeholders (``input_ids``); user outputs become graph outputs named from the output
  pytree (``last_hidden_state``, ``pooler_output``; ``output`` / ``output_0..`` otherwise);
* every FX value's FakeTensor metadata gives the IR type: free symbols of the shape environment
  become named dims (the user's ``torch.export.Dim`` name when it can be recovered, the symbol
  name such as ``s43`` otherwise, or ``dim_names[...]`` when given);
* SymInt values (``aten.sym_size.int``, ``operator.mul`` on sizes, ...) are never translated node
  by node: each is kept as its sympy expression and only *materialized* (``Shape`` → ``Mul`` ...)
  where a tensor op really needs it. Reshape and expand targets are read from the result's
  metadata and folded: a dim equal to the input's at the same position becomes ``0`` (reshape) or
  ``1`` (expand), one remaining symbolic dim becomes ``-1``, so most targets are constants;
* the high-level ops that export keeps (``linear``, ``layer_norm``, ``scaled_dot_product_attention``,
  ``gelu``, ``silu``, ``embedding``, ...) map to their IR counterparts. A program holding any other
  ATen op is first decomposed with ``ep.run_decompositions`` using the default table minus every
  op mapped here, so only the unmapped ops decompose (into core ATen); an op still unmapped then
  raises :class:`optc.ir.UnsupportedOpError`.

Python scalars in op arguments become constants of the dtype torch would compute in (the result
dtype recorded in the metadata); inputs are cast where torch's type promotion would.
"""

from __future__ import annotations

import math
import operator
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import sympy
import torch
import torch.fx

from ..ir import DType, Graph, IRError, TensorType, UnsupportedOpError, Value
from ..ir.folding import eliminate_dead_code
from ..ir.symbolic import mul_dims

try:  # newer IR versions have a dedicated error for unreadable model files
    from ..ir.errors import ModelFileError as _FileError
except ImportError:  # pragma: no cover
    _FileError = IRError

__all__ = ["import_exported_program", "load_pt2", "export_module", "torch_dtype", "mapped_ops"]

aten = torch.ops.aten
FxNode = torch.fx.Node

_INT64_MAX = 2**63 - 1
# Tensors from full/zeros/arange with at most this many elements become constants directly.
_FOLD_FILL_ELEMENTS = 4096

_DTYPES = {
    torch.float32: DType.FLOAT32,
    torch.float16: DType.FLOAT16,
    torch.bfloat16: DType.BFLOAT16,
    torch.float64: DType.FLOAT64,
    torch.int8: DType.INT8,
    torch.int16: DType.INT16,
    torch.int32: DType.INT32,
    torch.int64: DType.INT64,
    torch.uint8: DType.UINT8,
    torch.bool: DType.BOOL,
}
for _name, _dt in (("uint16", DType.UINT16), ("uint32", DType.UINT32), ("uint64", DType.UINT64)):
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _dt


def torch_dtype(dtype: torch.dtype) -> DType:
    """The IR element type of a torch dtype."""
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise UnsupportedOpError(f"torch dtype {dtype} has no IR element type") from None


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    torch_dtype(t.dtype)
    return t.numpy().copy()


# ---------------------------------------------------------------------------------------------
# handler registry
# ---------------------------------------------------------------------------------------------
Handler = Callable[["_Importer", FxNode, dict], Any]
_HANDLERS: dict[Any, Handler] = {}


def _overload(spec: str):
    packet, _, overload = spec.partition(".")
    p = getattr(aten, packet, None)
    if p is None:
        return None
    return getattr(p, overload or "default", None)


def _handles(*specs: str):
    def wrap(fn: Handler) -> Handler:
        for spec in specs:
            ov = _overload(spec)
            if ov is not None:
                _HANDLERS[ov] = fn
        return fn

    return wrap


def mapped_ops() -> list[str]:
    """The ATen overloads this frontend maps natively (they are kept out of decomposition)."""
    return sorted(str(op) for op in _HANDLERS)


# ops that only check things at run time: dropped
_DROPPED_PREFIXES = ("_assert", "sym_constrain_range", "_functional_assert", "_functional_sym_constrain")


@dataclass
class _Param:
    """A lifted parameter, buffer or tensor constant, added to the graph on first use."""

    key: str
    tensor: torch.Tensor
    value: Value | None = None


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def import_exported_program(ep: "torch.export.ExportedProgram", *, dim_names: dict[str, str] | None = None,
                            name: str = "main") -> Graph:
    """Convert an exported program to an IR graph (see the module docstring).

    ``dim_names`` renames symbolic dims; keys are shape-environment symbols (``"s43"``) or the
    recovered ``torch.export.Dim`` names (``"seq"``)."""
    return _import(ep, dim_names or {}, name, {})


def _import(ep, dim_names: dict[str, str], name: str, spec_names: dict[str, str]) -> Graph:
    names = _recover_dim_names(ep)
    names.update(spec_names)
    original = ep
    # Natively mapped ops whose handler refused a particular use (an adaptive pool to size 2,
    # ...): decomposed like unmapped ops on the next attempt.
    refused: set = set()
    while True:
        ep = original
        unmapped = _unmapped_nodes(ep.graph_module, refused)
        if unmapped:
            ep = _decompose(ep, unmapped, refused)
            still = _unmapped_nodes(ep.graph_module, refused)
            if still:
                node = still[0]
                raise UnsupportedOpError(
                    f"torch frontend: no mapping for {_target_name(node.target)} (fx node {node.name})"
                )
        try:
            return _Importer(ep, names, dim_names, name).run()
        except _Refused as r:
            if r.op in refused:
                raise r.error from None
            refused.add(r.op)


class _Refused(Exception):
    """A handler cannot map this use of a decomposable op: decompose it and try again."""

    def __init__(self, op, error: UnsupportedOpError):
        super().__init__(str(error))
        self.op, self.error = op, error


_DECOMPOSABLE: set | None = None


def _decomposable(op) -> bool:
    global _DECOMPOSABLE
    if _DECOMPOSABLE is None:
        from torch.export import default_decompositions

        _DECOMPOSABLE = set(default_decompositions().keys())
    return op in _DECOMPOSABLE


def load_pt2(path: str | os.PathLike, *, dim_names: dict[str, str] | None = None) -> Graph:
    """Load a ``.pt2`` written by ``torch.export.save`` and import it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _FileError(f"{path}: no such file")
    try:
        ep = torch.export.load(path)
    except Exception as e:  # noqa: BLE001 - any loader failure is a bad file for the user
        raise _FileError(f"{path}: not a loadable torch.export archive ({type(e).__name__}: {e})") from None
    return import_exported_program(ep, dim_names=dim_names, name=_graph_name(path))


def export_module(module: torch.nn.Module, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                  dynamic_shapes: Any = None, *, dim_names: dict[str, str] | None = None) -> Graph:
    """``torch.export.export(module, args, kwargs, dynamic_shapes=..., strict=False)`` in eval
    mode, then import. ``Dim`` names in ``dynamic_shapes`` name the graph's symbolic dims."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            ep = torch.export.export(module, tuple(args), dict(kwargs or {}), dynamic_shapes=dynamic_shapes, strict=False)
    finally:
        module.train(was_training)
    return _import(ep, dim_names or {}, type(module).__name__, _names_from_spec(ep, dynamic_shapes))


def _graph_name(path: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", os.path.splitext(os.path.basename(path))[0])
    return base or "main"


# ---------------------------------------------------------------------------------------------
# decomposition fallback
# ---------------------------------------------------------------------------------------------
def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target.__name__}" if target.namespace == "aten" else str(target)
    return getattr(target, "__name__", str(target))


def _is_dropped(target) -> bool:
    return isinstance(target, torch._ops.OpOverload) and target.__name__.startswith(_DROPPED_PREFIXES)


def _unmapped_nodes(gm: torch.fx.GraphModule, refused: set = frozenset()) -> list[FxNode]:
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        t = node.target
        if _is_inplace(t) or t in refused:
            out.append(node)  # mutations (x[...] = v, fill_, add_): functionalized by decomposition
            continue
        if t in _HANDLERS or _is_dropped(t) or t is operator.getitem:
            continue
        if isinstance(t, torch._ops.HigherOrderOperator):
            if t.__name__ == "wrap_with_set_grad_enabled" or (t.__name__ == "wrap_with_autocast" and not _autocast_enabled(node)):
                sub = getattr(gm, node.args[1 if t.__name__ == "wrap_with_set_grad_enabled" else 4].target)
                out += _unmapped_nodes(sub, refused)
                continue
            out.append(node)
            continue
        if not isinstance(t, torch._ops.OpOverload) and _is_sym_val(node.meta.get("val")):
            continue  # python arithmetic on sizes (operator.mul, sym_max, ...): kept symbolic
        if isinstance(t, torch._ops.OpOverload) and _is_sym_val(node.meta.get("val")):
            continue  # aten.sym_size.int, sym_numel, ...
        out.append(node)
    return out


def _is_inplace(target) -> bool:
    if not isinstance(target, torch._ops.OpOverload) or target.__name__.startswith(("detach_", "_assert")):
        return False
    try:
        return bool(target._schema.is_mutable)
    except AttributeError:  # pragma: no cover
        return False


def _autocast_enabled(node: FxNode) -> bool:
    return bool(node.args[2])


def _decompose(ep, unmapped: list[FxNode], refused: set = frozenset()):
    from torch.export import default_decompositions

    table = default_decompositions()
    for op in _HANDLERS:
        if op not in refused:
            table.pop(op, None)
    decomposable = [n for n in unmapped if isinstance(n.target, torch._ops.HigherOrderOperator) or n.target in table
                    or _is_inplace(n.target)]
    if not decomposable:
        node = unmapped[0]
        raise UnsupportedOpError(f"torch frontend: no mapping for {_target_name(node.target)} (fx node {node.name})")
    return ep.run_decompositions(table)


def _is_sym_val(v) -> bool:
    return isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)) and not isinstance(v, torch.Tensor)


# ---------------------------------------------------------------------------------------------
# symbolic dim names
# ---------------------------------------------------------------------------------------------
def _shape_env(ep):
    for node in ep.graph.nodes:
        v = node.meta.get("val")
        if isinstance(v, torch.Tensor) and getattr(v, "fake_mode", None) is not None:
            return v.fake_mode.shape_env
    return None


def _recover_dim_names(ep) -> dict[str, str]:
    """symbol name → the user's ``Dim`` name, from the shape environment's debug names."""
    env = _shape_env(ep)
    if env is None:
        return {}
    debug = getattr(env, "source_name_to_debug_name", None) or {}
    out: dict[str, str] = {}
    for sym, sources in (getattr(env, "var_to_sources", None) or {}).items():
        for src in sources:
            try:
                src_name = src.name() if callable(src.name) else src.name
            except Exception:  # noqa: BLE001
                continue
            d = debug.get(src_name)
            if isinstance(d, str) and d.isidentifier():
                out[str(sym)] = d
                break
    return out


def _names_from_spec(ep, dyn) -> dict[str, str]:
    """symbol name → Dim name from the ``dynamic_shapes`` that ``export_module`` was given
    (top-level tensor arguments only; the shape environment usually has them already)."""
    if dyn is None:
        return {}
    user = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    if isinstance(dyn, dict):
        pairs = [(k, v) for k, v in dyn.items() if k in user]
    elif isinstance(dyn, (list, tuple)):
        pairs = list(zip(user, dyn))
    else:
        return {}
    out: dict[str, str] = {}
    for pname, dspec in pairs:
        val = nodes[pname].meta.get("val") if pname in nodes else None
        if not isinstance(val, torch.Tensor) or not isinstance(dspec, (dict, list, tuple)):
            continue
        items = dspec.items() if isinstance(dspec, dict) else enumerate(dspec)
        for axis, dim in items:
            dname = getattr(dim, "__name__", None)
            if not isinstance(axis, int) or not isinstance(dname, str) or not dname.isidentifier() or axis >= val.dim():
                continue
            size = val.shape[axis]
            if isinstance(size, torch.SymInt) and isinstance(size.node.expr, sympy.Symbol):
                out.setdefault(str(size.node.expr), dname)
    return out


# ---------------------------------------------------------------------------------------------
# output names from the pytree spec
# ---------------------------------------------------------------------------------------------
def _children(spec) -> list:
    try:
        return list(spec.children())
    except (AttributeError, TypeError):
        return list(spec.children_specs)


def _leaf_names(spec) -> list[str]:
    def keys(s) -> list[str]:
        n = len(_children(s))
        ctx = s.context
        if s.type in (tuple, list):
            return [str(i) for i in range(n)]
        if isinstance(ctx, (list, tuple)) and len(ctx) == n and all(isinstance(k, (str, int)) for k in ctx):
            return [str(k) for k in ctx]
        if isinstance(ctx, type) and hasattr(ctx, "_fields"):  # namedtuple
            return list(ctx._fields)
        if isinstance(ctx, (list, tuple)) and len(ctx) == 2 and isinstance(ctx[1], (list, tuple)) and len(ctx[1]) == n:
            return [str(k) for k in ctx[1]]  # defaultdict: (default_factory, keys)
        return [str(i) for i in range(n)]

    def walk(s, prefix: str) -> list[str]:
        if s.is_leaf():
            return [prefix]
        out = []
        for k, c in zip(keys(s), _children(s)):
            out += walk(c, f"{prefix}.{k}" if prefix else k)
        return out

    if spec.is_leaf():
        return ["output"]
    if spec.type in (tuple, list):
        out = []
        for i, c in enumerate(_children(spec)):
            out += walk(c, f"output_{i}")
        return out
    return walk(spec, "")


def _sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-:/]", "_", name)
    return name or "output"


# ---------------------------------------------------------------------------------------------
# the importer
# ---------------------------------------------------------------------------------------------
class _Importer:
    def __init__(self, ep, recovered: dict[str, str], user_names: dict[str, str], name: str):
        self.ep = ep
        self.g = Graph(name)
        self.g.metadata["frontend"] = "torch.export"
        self.env: dict[FxNode, Any] = {}
        self._sym_names: dict[Any, str] = {}
        self._recovered = recovered
        self._user_names = user_names
        self._taken_dim_names: set[str] = set()
        self.dim_sources: dict[Any, tuple[Value, int]] = {}
        self._sym_cache: dict[Any, Value] = {}
        self._scalar_cache: dict[Any, Value] = {}
        self._float_cache: dict[Any, Value] = {}
        self._shape_cache: dict[tuple, Value] = {}
        self._const_cache: dict[tuple, Value] = {}
        self._named: set[int] = set()  # ids of values that already carry an fx node's name
        self._cur = "n"
        self._reserved: set[str] = set()
        self._tensor_nodes: list[tuple[FxNode, Value]] = []
        self._derived: dict[tuple, Value] = {}

    # -- dims ----------------------------------------------------------------------------------
    def sym_name(self, sym) -> str:
        name = self._sym_names.get(sym)
        if name is not None:
            return name
        raw = str(sym)
        cand = self._user_names.get(raw)
        if cand is None:
            rec = self._recovered.get(raw)
            cand = self._user_names.get(rec, rec) if rec is not None else None
        if cand is None or not str(cand).isidentifier() or cand in self._taken_dim_names:
            cand = raw
        self._taken_dim_names.add(cand)
        self._sym_names[sym] = cand
        return cand

    def ir_dim(self, d):
        e = _expr(d)
        if e.is_Integer:
            return int(e)
        if e.is_Symbol:
            return self.sym_name(e)
        if e.is_Mul:
            parts: list = []
            for f in e.args:
                if f.is_Integer:
                    parts.append(int(f))
                elif f.is_Symbol:
                    parts.append(self.sym_name(f))
                elif f.is_Pow and f.base.is_Symbol and f.exp.is_Integer and int(f.exp) > 0:
                    parts += [self.sym_name(f.base)] * int(f.exp)
                else:
                    return None
            return mul_dims(parts)
        return None

    def ttype(self, fake: torch.Tensor) -> TensorType:
        return TensorType(torch_dtype(fake.dtype), tuple(self.ir_dim(d) for d in fake.shape))

    # -- emitting --------------------------------------------------------------------------------
    def emit(self, op: str, *inputs: Value | None, num_outputs: int = 1, **attrs):
        hint = f"{self._cur}_{op.lower()}"
        names = []
        for i in range(num_outputs):
            h = hint if num_outputs == 1 else f"{hint}_{i}"
            names.append(self.g.unique_name(h + "_" if h in self._reserved else h))
        node = self.g.add_node(op, list(inputs), attrs, name=self._cur, output_names=names)
        return node.outputs[0] if num_outputs == 1 else list(node.outputs)

    def const(self, array, name: str | None = None) -> Value:
        array = np.asarray(array)
        key = None
        if array.size <= 16 and name is None:
            key = (array.dtype.str, array.shape, array.tobytes())
            hit = self._const_cache.get(key)
            if hit is not None:
                return hit
        v = self.g.add_constant(array, self.g.unique_name(name or "const"))
        if key is not None:
            self._const_cache[key] = v
        return v

    def scalar(self, value, dtype: DType) -> Value:
        """A 0-d constant of ``dtype``."""
        return self.const(np.array(value, dtype=dtype.numpy))

    def i64(self, values) -> Value:
        return self.const(np.asarray(values, dtype=np.int64))

    def cast(self, v: Value, dtype: DType) -> Value:
        if v.dtype == dtype:
            return v
        if v.is_constant:
            arr = v.const.astype(dtype.numpy)
            return self.const(arr, None if arr.size <= 16 else self.g.unique_name(f"{v.name}.{dtype.value}"))
        return self.emit("Cast", v, to=dtype)

    # -- symbolic values -----------------------------------------------------------------------
    def sym_vec(self, x) -> Value:
        """A 1-element int64 tensor holding the value of a SymInt / int / sympy expression."""
        e = _expr(x)
        hit = self._sym_cache.get(e)
        if hit is not None:
            return hit
        v = self._materialize(e)
        self._sym_cache[e] = v
        return v

    def sym_scalar(self, x) -> Value:
        e = _expr(x)
        if e.is_Integer:
            return self.scalar(int(e), DType.INT64)
        hit = self._scalar_cache.get(e)
        if hit is None:
            hit = self.emit("Squeeze", self.sym_vec(e), self.i64([0]))
            self._scalar_cache[e] = hit
        return hit

    def _materialize(self, e) -> Value:
        if e.is_Integer:
            return self.i64([int(e)])
        src = self._find_source(e)
        if src is not None:
            v, axis = src
            return self.emit("Shape", v, start=axis, end=axis + 1)
        if e.is_Symbol:
            # the symbol only appears scaled (c*s) in the tensors we have: divide it back out
            for (other, (v, axis)) in list(self.dim_sources.items()):
                q = sympy.simplify(other / e)
                if q.is_Integer and int(q) > 0:
                    return self.emit("Div", self.emit("Shape", v, start=axis, end=axis + 1), self.i64([int(q)]))
            raise UnsupportedOpError(f"torch frontend: cannot compute the size {e} (no tensor has it as a dim)")
        args = [self.sym_vec(a) for a in e.args]
        if e.is_Mul:
            return _fold(lambda a, b: self.emit("Mul", a, b), args)
        if e.is_Add:
            return _fold(lambda a, b: self.emit("Add", a, b), args)
        if e.is_Pow and e.exp.is_Integer and int(e.exp) > 0:
            base = self.sym_vec(e.base)
            return _fold(lambda a, b: self.emit("Mul", a, b), [base] * int(e.exp))
        fname = type(e).__name__
        if fname in ("FloorDiv", "CleanDiv") and len(args) == 2:
            return self.emit("Div", *args)  # sizes are non-negative: truncation == floor
        if fname in ("Mod", "PythonMod") and len(args) == 2:
            return self.emit("Mod", *args)
        if fname == "Max":
            return self.emit("Max", *args)
        if fname == "Min":
            return self.emit("Min", *args)
        raise UnsupportedOpError(f"torch frontend: cannot compute the symbolic size {e} ({fname})")

    def _find_source(self, e):
        src = self.dim_sources.get(e)
        if src is not None:
            return src
        for node, v in self._tensor_nodes:
            fake = node.meta.get("val")
            if isinstance(fake, torch.Tensor):
                for axis, d in enumerate(fake.shape):
                    if isinstance(d, torch.SymInt) and d.node.expr == e and v.type.rank is not None:
                        self.dim_sources[e] = (v, axis)
                        return v, axis
        return None

    def register_dims(self, v: Value, fake: torch.Tensor) -> None:
        for axis, d in enumerate(fake.shape):
            if isinstance(d, torch.SymInt):
                e = d.node.expr
                if not e.is_Integer:
                    self.dim_sources.setdefault(e, (v, axis))

    def shape_operand(self, entries: Sequence) -> Value:
        """A 1-D int64 tensor: ints stay constants, symbolic entries are materialized."""
        if all(_expr(x).is_Integer for x in entries):
            return self.i64([int(_expr(x)) for x in entries])
        key = tuple(_expr(x) for x in entries)
        hit = self._shape_cache.get(key)
        if hit is not None:
            return hit
        pieces: list[Value] = []
        run: list[int] = []
        for x in entries:
            e = _expr(x)
            if e.is_Integer:
                run.append(int(e))
                continue
            if run:
                pieces.append(self.i64(run))
                run = []
            pieces.append(self.sym_vec(e))
        if run:
            pieces.append(self.i64(run))
        v = pieces[0] if len(pieces) == 1 else self.emit("Concat", *pieces, axis=0)
        self._shape_cache[key] = v
        return v

    # -- fx access -----------------------------------------------------------------------------
    def v(self, a) -> Value:
        """The IR tensor for an FX argument (a node, or a python scalar → 0-d constant)."""
        if isinstance(a, FxNode):
            e = self.env.get(a)
            if isinstance(e, Value):
                return e
            if isinstance(e, _Param):
                return self.param_value(e)
            if _is_sym_val(e):
                return self._scalar_of(e)
            raise IRError(f"torch frontend: {a.name} is not a tensor")
        if isinstance(a, (bool, int, float)) or _is_sym_val(a):
            return self._scalar_of(a)
        raise IRError(f"torch frontend: expected a tensor, got {a!r}")

    def _scalar_of(self, s) -> Value:
        if isinstance(s, bool):
            return self.scalar(s, DType.BOOL)
        if isinstance(s, int):
            return self.scalar(s, DType.INT64)
        if isinstance(s, float):
            return self.scalar(s, DType.FLOAT32)
        if isinstance(s, torch.SymInt):
            return self.sym_scalar(s)
        if isinstance(s, torch.SymFloat):
            return self.float_scalar(s.node.expr)
        raise UnsupportedOpError(f"torch frontend: symbolic {type(s).__name__} values are not supported ({s})")

    def float_scalar(self, e) -> Value:
        """A 0-d float64 tensor holding a SymFloat expression (``ToFloat(s0) * 0.5`` ...)."""
        if e.is_Number:
            return self.scalar(float(e), DType.FLOAT64)
        hit = self._float_cache.get(e)
        if hit is not None:
            return hit
        fname = type(e).__name__
        args = e.args
        if fname == "ToFloat" or (e.is_integer and not e.is_Symbol) or (e.is_Symbol and e in self._sym_cache):
            v = self.cast(self.sym_scalar(args[0] if fname == "ToFloat" else e), DType.FLOAT64)
        elif e.is_Mul:
            v = _fold(lambda a, b: self.emit("Mul", a, b), [self.float_scalar(x) for x in args])
        elif e.is_Add:
            v = _fold(lambda a, b: self.emit("Add", a, b), [self.float_scalar(x) for x in args])
        elif e.is_Pow or fname == "FloatPow":
            base, ex = args
            v = self.emit("Reciprocal", self.float_scalar(base)) if ex == -1 else \
                self.emit("Pow", self.float_scalar(base), self.float_scalar(ex))
        elif fname in ("FloatTrueDiv", "IntTrueDiv"):
            v = self.emit("Div", self.float_scalar(args[0]), self.float_scalar(args[1]))
        else:
            raise UnsupportedOpError(f"torch frontend: cannot compute the symbolic float {e} ({fname})")
        self._float_cache[e] = v
        return v

    def lit(self, a):
        """A python value for a non-tensor argument (SymInts stay SymInts)."""
        if isinstance(a, FxNode):
            e = self.env.get(a)
            if isinstance(e, (Value, _Param)):
                raise IRError(f"torch frontend: {a.name} is a tensor where a scalar was expected")
            return e
        if isinstance(a, (list, tuple)):
            return type(a)(self.lit(x) for x in a)
        return a

    def derived_param(self, src: FxNode, perm: list[int], exclusive: bool) -> Value:
        """A parameter transposed at import time. It keeps the state-dict key as its name when
        no other use needs the original layout, else it is ``<key>.T``."""
        p: _Param = self.env[src]
        key = (id(p), tuple(perm))
        hit = self._derived.get(key)
        if hit is None:
            arr = np.ascontiguousarray(_to_numpy(p.tensor).transpose(perm))
            name = _sanitize(p.key) if exclusive and p.value is None else _sanitize(p.key) + ".T"
            hit = self._derived[key] = self.g.add_constant(arr, self.g.unique_name(name))
        return hit

    def param_value(self, p: _Param) -> Value:
        if p.value is None:
            p.value = self.g.add_constant(_to_numpy(p.tensor), self.g.unique_name(_sanitize(p.key)))
        return p.value

    def operand(self, a, dtype: DType) -> Value:
        """An FX argument as a tensor of ``dtype`` (python scalars become constants of it)."""
        if isinstance(a, FxNode) and isinstance(self.env.get(a), (Value, _Param)):
            return self.cast(self.v(a), dtype)
        s = self.lit(a)
        if isinstance(s, (bool, int, float)):
            return self.scalar(s, dtype)
        return self.cast(self._scalar_of(s), dtype)

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> Graph:
        ep, g = self.ep, self.g
        sig = ep.graph_signature
        specs = {s.arg.name: s for s in sig.input_specs}
        out_names = self._output_names()
        self._reserved = set(out_names)
        placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
        for node in placeholders:
            spec = specs.get(node.name)
            kind = spec.kind.name if spec is not None else "USER_INPUT"
            val = node.meta.get("val")
            if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
                tensor = _lookup_state(ep, spec.target)
                self.env[node] = _Param(spec.target, tensor)
            elif kind == "USER_INPUT":
                if isinstance(val, torch.Tensor):
                    v = g.add_input(self._free_name(node.name), self.ttype(val))
                    self._named.add(id(v))
                    self.register_dims(v, val)
                    self._tensor_nodes.append((node, v))
                    self.env[node] = v
                else:
                    self.env[node] = val  # a scalar input that export specialized
            else:
                raise UnsupportedOpError(f"torch frontend: unsupported input kind {kind} ({node.name})")
        outs = self.run_graph(ep.graph_module, None)
        user = [a for a, s in zip(outs, sig.output_specs) if s.kind.name == "USER_OUTPUT"]
        self._set_outputs(user, out_names)
        eliminate_dead_code(g)
        for sym, name in self._sym_names.items():
            vr = self.ep.range_constraints.get(sym)
            if vr is not None:
                lo, hi = vr.lower, vr.upper
                g.metadata[f"dim_range.{name}"] = f"{lo}..{'inf' if 'oo' in str(hi) else hi}"
        return g

    def run_graph(self, gm: torch.fx.GraphModule, args: list | None) -> list:
        phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if args is not None:
            for n, a in zip(phs, args):
                self.env[n] = a
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                res = node.args[0]
                res = res if isinstance(res, (list, tuple)) else [res]
                return [self.env.get(r) if isinstance(r, FxNode) else r for r in res]
            if node.op == "get_attr":
                self.env[node] = _get_attr(gm, node.target)
                if isinstance(self.env[node], torch.Tensor):
                    self.env[node] = _Param(node.target, self.env[node])
                continue
            if node.op != "call_function":
                raise UnsupportedOpError(f"torch frontend: unsupported fx node kind {node.op} ({node.name})")
            self._cur = node.name
            self.env[node] = self._call(node, gm)
            self._finish(node)
        return []

    def _call(self, node: FxNode, gm) -> Any:
        t = node.target
        val = node.meta.get("val")
        if t is operator.getitem:
            seq = self.env[node.args[0]]
            return seq[node.args[1]]
        if _is_dropped(t):
            return None
        h = _HANDLERS.get(t)
        if h is not None:
            try:
                return h(self, node, _bind(node))
            except UnsupportedOpError as e:
                if _decomposable(t):
                    raise _Refused(t, e) from None
                raise
        if isinstance(t, torch._ops.HigherOrderOperator):
            return self._hop(node, gm)
        if _is_sym_val(val):
            return val  # size arithmetic: kept as an expression, materialized on demand
        raise UnsupportedOpError(f"torch frontend: no mapping for {_target_name(t)} (fx node {node.name})")

    def _hop(self, node: FxNode, gm):
        name = node.target.__name__
        if name == "wrap_with_set_grad_enabled":
            sub, args = node.args[1], node.args[2:]
        elif name == "wrap_with_autocast" and not _autocast_enabled(node):
            sub, args = node.args[4], node.args[5:]
        else:
            raise UnsupportedOpError(f"torch frontend: no mapping for higher-order op {name} (fx node {node.name})")
        sub_gm = self.env[sub]
        outs = self.run_graph(sub_gm, [self.env.get(a) if isinstance(a, FxNode) else a for a in args])
        self._cur = node.name
        return outs

    def _finish(self, node: FxNode) -> None:
        res = self.env[node]
        val = node.meta.get("val")
        if isinstance(res, Value):
            if isinstance(val, torch.Tensor):
                self._refine(res, val, node)
                self._tensor_nodes.append((node, res))
            self._name_result(res, node.name)
        elif isinstance(res, list) and isinstance(val, (list, tuple)):
            for r, f in zip(res, val):
                if isinstance(r, Value) and isinstance(f, torch.Tensor):
                    self._refine(r, f, node)

    def _name_result(self, v: Value, name: str) -> None:
        if id(v) in self._named or v.producer is None:
            return
        self._named.add(id(v))
        self.g.rename_value(v, self._free_name(name))

    def _free_name(self, name: str) -> str:
        name = _sanitize(name)
        if name in self._reserved:
            name = name + "_"
        return self.g.unique_name(name)

    def _refine(self, v: Value, fake: torch.Tensor, node: FxNode) -> None:
        if v.producer is None or id(v) in self._named:
            return
        want = self.ttype(fake)
        have = v.type
        where = f"torch frontend: {node.name} ({_target_name(node.target)})"
        if have.dtype != want.dtype:
            raise IRError(f"{where}: produced {have.dtype.value}, torch says {want.dtype.value}")
        if have.shape is None:
            v.type = want
            return
        if len(have.shape) != len(want.shape):
            raise IRError(f"{where}: produced rank {len(have.shape)}, torch says {len(want.shape)}")
        dims = []
        for a, b in zip(have.shape, want.shape):
            if isinstance(a, int) and isinstance(b, int) and a != b:
                raise IRError(f"{where}: produced shape {have}, torch says {want}")
            dims.append(b if a is None or isinstance(b, int) else a)
        v.type = TensorType(have.dtype, tuple(dims))

    # -- outputs -------------------------------------------------------------------------------
    def _output_names(self) -> list[str]:
        n_user = sum(1 for s in self.ep.graph_signature.output_specs if s.kind.name == "USER_OUTPUT")
        try:
            names = _leaf_names(self.ep.call_spec.out_spec)
        except Exception:  # noqa: BLE001 - exotic pytree: fall back to positions
            names = []
        if len(names) != n_user or len(set(names)) != len(names):
            names = ["output"] if n_user == 1 else [f"output_{i}" for i in range(n_user)]
        return [_sanitize(n) for n in names]

    def _set_outputs(self, results: list, names: list[str]) -> None:
        g = self.g
        self._reserved = set()
        outs: list[Value] = []
        for r, name in zip(results, names):
            if isinstance(r, _Param):
                r = self.param_value(r)
            elif not isinstance(r, Value):
                if r is None:
                    continue
                r = self._scalar_of(r) if _is_sym_val(r) else None
                if r is None:
                    raise UnsupportedOpError(f"torch frontend: output {name} is not a tensor")
            if r.producer is None or r in outs:
                r = g.add_node("Identity", [r], name=f"{name}_identity", output_names=[g.unique_name(name + "_")]).output
            if r.name != name:
                if g.unique_name(name) != name:  # taken: move the other value aside
                    g.rename_value(g.value(name), g.unique_name(name + "_"))
                g.rename_value(r, name)
            outs.append(r)
        g.set_outputs(outs)


def _fold(fn, items):
    acc = items[0]
    for x in items[1:]:
        acc = fn(acc, x)
    return acc


def _expr(x):
    if isinstance(x, torch.SymInt):
        return x.node.expr
    if isinstance(x, (bool, np.bool_)):
        return sympy.Integer(int(x))
    if isinstance(x, (int, np.integer)):
        return sympy.Integer(int(x))
    if isinstance(x, sympy.Basic):
        return x
    raise UnsupportedOpError(f"torch frontend: expected a size, got {x!r}")


def _same(a, b) -> bool:
    ea, eb = _expr(a), _expr(b)
    if ea == eb:
        return True
    if ea.is_Integer and eb.is_Integer:
        return False
    try:
        return bool(sympy.expand(ea - eb) == 0)
    except Exception:  # noqa: BLE001
        return False


def _lookup_state(ep, target: str) -> torch.Tensor:
    if target in ep.state_dict:
        return ep.state_dict[target]
    if target in ep.constants:
        c = ep.constants[target]
        if isinstance(c, torch.Tensor):
            return c
    raise UnsupportedOpError(f"torch frontend: lifted input {target} is not a tensor")


def _get_attr(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _bind(node: FxNode) -> dict:
    """Arguments by schema name, defaults filled in."""
    schema = node.target._schema
    out = {}
    for i, a in enumerate(schema.arguments):
        if i < len(node.args) and not a.kwarg_only:
            out[a.name] = node.args[i]
        elif a.name in node.kwargs:
            out[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
        else:
            out[a.name] = None
    return out


def _val(a):
    return a.meta.get("val") if isinstance(a, FxNode) else a


def _out(node: FxNode) -> torch.Tensor:
    return node.meta["val"]


def _odt(node: FxNode) -> DType:
    return torch_dtype(node.meta["val"].dtype)


def _rank(a) -> int:
    return _val(a).dim()


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------------------------------------
# handlers: no-ops and casts
# ---------------------------------------------------------------------------------------------
@_handles("alias", "detach", "detach_", "clone", "contiguous", "lift_fresh_copy", "lift_fresh", "dropout", "feature_dropout",
          "alpha_dropout", "feature_alpha_dropout", "view_as", "expand_as")
def _identity(m: _Importer, node, a):
    src = a.get("input", a.get("self"))
    if node.target == _overload("view_as"):
        return _reshape_like(m, node, src)
    if node.target == _overload("expand_as"):
        return _expand_to(m, m.v(src), _val(src), _out(node))
    return m.v(src)


@_handles("native_dropout")
def _native_dropout(m, node, a):
    x = m.v(a["input"])
    return [x, None]


@_handles("_to_copy", "to.dtype", "to.dtype_layout", "to.device", "to.other", "to.prim_dtype", "to.prim_Device",
          "type_as", "_autocast_to_reduced_precision", "_autocast_to_full_precision")
def _to(m, node, a):
    return m.cast(m.v(a["self"]), _odt(node))


# ---------------------------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------------------------
def _binary(m, node, op: str, x, y, dtype: DType | None = None):
    dt = dtype or _odt(node)
    return m.emit(op, m.operand(x, dt), m.operand(y, dt))


def _scaled(m, y, alpha, dt: DType):
    alpha = m.lit(alpha)
    if alpha is None or (not isinstance(alpha, torch.SymInt) and alpha == 1):
        return y
    return m.emit("Mul", y, m.operand(alpha, dt) if not isinstance(alpha, (int, float)) else m.scalar(alpha, dt))


@_handles("add.Tensor", "add.Scalar")
def _add(m, node, a):
    dt = _odt(node)
    x, y = m.operand(a["self"], dt), m.operand(a["other"], dt)
    return m.emit("Add", x, _scaled(m, y, a.get("alpha", 1), dt))


@_handles("sub.Tensor", "sub.Scalar")
def _sub(m, node, a):
    dt = _odt(node)
    x, y = m.operand(a["self"], dt), m.operand(a["other"], dt)
    return m.emit("Sub", x, _scaled(m, y, a.get("alpha", 1), dt))


@_handles("rsub.Tensor", "rsub.Scalar")
def _rsub(m, node, a):
    dt = _odt(node)
    x, y = m.operand(a["self"], dt), m.operand(a["other"], dt)
    return m.emit("Sub", y, _scaled(m, x, a.get("alpha", 1), dt))


@_handles("mul.Tensor", "mul.Scalar")
def _mul(m, node, a):
    if _odt(node) is DType.BOOL:
        return _binary(m, node, "And", a["self"], a["other"])
    return _binary(m, node, "Mul", a["self"], a["other"])


def _trunc(m, x: Value) -> Value:
    return m.emit("Mul", m.emit("Sign", x), m.emit("Floor", m.emit("Abs", x)))


def _floor_div(m, x: Value, y: Value) -> Value:
    if x.dtype.is_float:
        return m.emit("Floor", m.emit("Div", x, y))
    # integers: (x - python_mod(x, y)) / y is exact, so truncating division gives the floor
    return m.emit("Div", m.emit("Sub", x, m.emit("Mod", x, y, fmod=0)), y)


@_handles("div.Tensor", "div.Scalar", "div.Tensor_mode", "div.Scalar_mode", "true_divide.Tensor", "floor_divide.default",
          "floor_divide.Scalar")
def _div(m, node, a):
    mode = a.get("rounding_mode")
    if node.target in (_overload("floor_divide.default"), _overload("floor_divide.Scalar")):
        mode = "floor"
    dt = _odt(node)
    x, y = m.operand(a["self"], dt), m.operand(a["other"], dt)
    if mode is None:
        return m.emit("Div", x, y)
    if mode == "trunc":
        q = m.emit("Div", x, y)
        return _trunc(m, q) if dt.is_float else q
    if mode == "floor":
        return _floor_div(m, x, y)
    raise UnsupportedOpError(f"torch frontend: div rounding mode {mode!r} ({node.name})")


@_handles("remainder.Tensor", "remainder.Scalar", "fmod.Tensor", "fmod.Scalar")
def _remainder(m, node, a):
    dt = _odt(node)
    x, y = m.operand(a["self"], dt), m.operand(a["other"], dt)
    if node.target.__name__.startswith("fmod"):
        return m.emit("Mod", x, y, fmod=1)
    if dt.is_float:
        return m.emit("Sub", x, m.emit("Mul", m.emit("Floor", m.emit("Div", x, y)), y))
    return m.emit("Mod", x, y, fmod=0)


@_handles("pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar")
def _pow(m, node, a):
    dt = _odt(node)
    base = m.operand(a["self"], dt)
    exp = a["exponent"]
    e = m.lit(exp) if not (isinstance(exp, FxNode) and isinstance(m.env.get(exp), (Value, _Param))) else None
    if isinstance(e, (int, float)) and not isinstance(e, bool):
        if e == 1:
            return base
        return m.emit("Pow", base, m.scalar(e, dt))
    return m.emit("Pow", base, m.operand(exp, dt))


def _unary(op: str, float_only: bool = True):
    def h(m, node, a):
        x = m.v(a["self"])
        dt = _odt(node)
        return m.emit(op, m.cast(x, dt) if float_only or x.dtype != dt else x)

    return h


for _spec, _op in [
    ("exp", "Exp"), ("log", "Log"), ("sqrt", "Sqrt"), ("reciprocal", "Reciprocal"), ("sin", "Sin"), ("cos", "Cos"),
    ("tan", "Tan"), ("asin", "Asin"), ("acos", "Acos"), ("atan", "Atan"), ("sinh", "Sinh"), ("cosh", "Cosh"),
    ("tanh", "Tanh"), ("sigmoid", "Sigmoid"), ("erf", "Erf"), ("silu", "Silu"), ("mish", "Mish"),
    ("hardswish", "HardSwish"), ("asinh", "Asinh"), ("acosh", "Acosh"), ("atanh", "Atanh"),
]:
    _handles(_spec)(_unary(_op))
for _spec, _op in [("neg", "Neg"), ("abs", "Abs"), ("relu", "Relu"), ("sign", "Sign")]:
    _handles(_spec)(_unary(_op, float_only=False))


@_handles("floor", "ceil", "round", "trunc")
def _rounding(m, node, a):
    x = m.v(a["self"])
    if not x.dtype.is_float:
        return x
    name = node.target.__name__.split(".")[0]
    if name == "trunc":
        return _trunc(m, x)
    return m.emit({"floor": "Floor", "ceil": "Ceil", "round": "Round"}[name], x)


@_handles("rsqrt")
def _rsqrt(m, node, a):
    return m.emit("Reciprocal", m.emit("Sqrt", m.cast(m.v(a["self"]), _odt(node))))


@_handles("log1p")
def _log1p(m, node, a):
    x = m.cast(m.v(a["self"]), _odt(node))
    return m.emit("Log", m.emit("Add", x, m.scalar(1, x.dtype)))


@_handles("expm1")
def _expm1(m, node, a):
    x = m.cast(m.v(a["self"]), _odt(node))
    return m.emit("Sub", m.emit("Exp", x), m.scalar(1, x.dtype))


@_handles("square")
def _square(m, node, a):
    x = m.cast(m.v(a["self"]), _odt(node))
    return m.emit("Mul", x, x)


@_handles("gelu")
def _gelu(m, node, a):
    return m.emit("Gelu", m.v(a["self"]), approximate=a.get("approximate") or "none")


@_handles("leaky_relu")
def _leaky_relu(m, node, a):
    return m.emit("LeakyRelu", m.v(a["self"]), alpha=float(a.get("negative_slope", 0.01)))


@_handles("elu", "selu", "celu")
def _elu(m, node, a):
    x = m.v(a["self"])
    name = node.target.__name__.split(".")[0]
    if name == "selu":
        return m.emit("Selu", x)
    if name == "celu":
        return m.emit("Celu", x, alpha=float(a.get("alpha", 1.0)))
    alpha, scale, in_scale = (float(a.get(k, 1.0)) for k in ("alpha", "scale", "input_scale"))
    if scale == 1 and in_scale == 1:
        return m.emit("Elu", x, alpha=alpha)
    # scale * (max(0, x) + min(0, alpha * (exp(x * input_scale) - 1)))
    dt = x.dtype
    neg = m.emit("Mul", m.emit("Sub", m.emit("Exp", m.emit("Mul", x, m.scalar(in_scale, dt))), m.scalar(1, dt)), m.scalar(alpha * scale, dt))
    return m.emit("Where", m.emit("Greater", x, m.scalar(0, dt)), m.emit("Mul", x, m.scalar(scale, dt)), neg)


@_handles("hardsigmoid")
def _hardsigmoid(m, node, a):
    return m.emit("HardSigmoid", m.v(a["self"]), alpha=1 / 6, beta=0.5)


@_handles("softplus")
def _softplus(m, node, a):
    x = m.v(a["self"])
    beta = float(a.get("beta", 1))
    if beta == 1:
        return m.emit("Softplus", x)
    b = m.scalar(beta, x.dtype)
    return m.emit("Div", m.emit("Softplus", m.emit("Mul", x, b)), b)


@_handles("hardtanh", "relu6")
def _hardtanh(m, node, a):
    x = m.v(a["self"])
    lo, hi = (0.0, 6.0) if node.target.__name__.startswith("relu6") else (float(a.get("min_val", -1)), float(a.get("max_val", 1)))
    return m.emit("Clip", x, m.scalar(lo, x.dtype), m.scalar(hi, x.dtype))


@_handles("clamp", "clamp.Tensor", "clamp_min", "clamp_max", "clamp_min.Tensor", "clamp_max.Tensor")
def _clamp(m, node, a):
    dt = _odt(node)
    x = m.operand(a["self"], dt)
    name = node.target.__name__
    lo = a.get("min") if not name.startswith("clamp_max") else None
    hi = a.get("max") if not name.startswith("clamp_min") else None
    lo = m.operand(lo, dt) if lo is not None else None
    hi = m.operand(hi, dt) if hi is not None else None
    if lo is not None and lo.type.rank != 0 or hi is not None and hi.type.rank != 0:  # tensor bounds broadcast
        if lo is not None:
            x = m.emit("Max", x, lo)
        if hi is not None:
            x = m.emit("Min", x, hi)
        return x
    return m.emit("Clip", x, lo, hi)


@_handles("maximum", "max.other", "fmax")
def _maximum(m, node, a):
    return _binary(m, node, "Max", a["self"], a["other"])


@_handles("minimum", "min.other", "fmin")
def _minimum(m, node, a):
    return _binary(m, node, "Min", a["self"], a["other"])


def _promoted(a, b) -> DType:
    def proxy(x):
        v = _val(x)
        if isinstance(v, torch.Tensor):
            return torch.empty((0,) if v.dim() else (), dtype=v.dtype)
        if isinstance(v, torch.SymInt):
            return 1
        if isinstance(v, torch.SymFloat):
            return 1.0
        if isinstance(v, torch.SymBool):
            return True
        return v

    pa, pb = proxy(a), proxy(b)
    if not isinstance(pa, torch.Tensor) and not isinstance(pb, torch.Tensor):
        pa = torch.tensor(pa)
    return torch_dtype(torch.result_type(pa, pb))


_COMPARE = {"eq": "Equal", "ne": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


@_handles(*(f"{k}.{o}" for k in _COMPARE for o in ("Tensor", "Scalar")))
def _compare(m, node, a):
    name = node.target.__name__.split(".")[0]
    dt = _promoted(a["self"], a["other"])
    y = _binary(m, node, _COMPARE[name], a["self"], a["other"], dt)
    return m.emit("Not", y) if name == "ne" else y


def _logical(op_bool: str, op_int: str | None):
    def h(m, node, a):
        dt = _odt(node)
        if dt is DType.BOOL or op_int is None:
            return m.emit(op_bool, m.operand(a["self"], DType.BOOL), m.operand(a["other"], DType.BOOL))
        return _binary(m, node, op_int, a["self"], a["other"])

    return h


_handles("__and__.Tensor", "__and__.Scalar", "bitwise_and.Tensor", "bitwise_and.Scalar")(_logical("And", "BitwiseAnd"))
_handles("__or__.Tensor", "__or__.Scalar", "bitwise_or.Tensor", "bitwise_or.Scalar")(_logical("Or", "BitwiseOr"))
_handles("__xor__.Tensor", "__xor__.Scalar", "bitwise_xor.Tensor", "bitwise_xor.Scalar")(_logical("Xor", "BitwiseXor"))
_handles("logical_and")(_logical("And", None))
_handles("logical_or")(_logical("Or", None))
_handles("logical_xor")(_logical("Xor", None))


@_handles("logical_not", "bitwise_not")
def _not(m, node, a):
    x = m.v(a["self"])
    if node.target.__name__.startswith("bitwise") and x.dtype is not DType.BOOL:
        return m.emit("BitwiseNot", x)
    return m.emit("Not", m.cast(x, DType.BOOL))


@_handles("isnan")
def _isnan(m, node, a):
    return m.emit("IsNaN", m.v(a["self"]))


@_handles("isinf")
def _isinf(m, node, a):
    return m.emit("IsInf", m.v(a["self"]))


@_handles("where.self", "where.ScalarSelf", "where.ScalarOther", "where.Scalar")
def _where(m, node, a):
    dt = _odt(node)
    cond = m.cast(m.v(a["condition"]), DType.BOOL)
    return m.emit("Where", cond, m.operand(a["self"], dt), m.operand(a["other"], dt))


@_handles("masked_fill.Scalar", "masked_fill.Tensor")
def _masked_fill(m, node, a):
    dt = _odt(node)
    x = m.operand(a["self"], dt)
    mask = m.cast(m.v(a["mask"]), DType.BOOL)
    return m.emit("Where", mask, m.operand(a["value"], dt), x)


# ---------------------------------------------------------------------------------------------
# shapes and data movement
# ---------------------------------------------------------------------------------------------
def _reshape(m: _Importer, x: Value, in_shape, out_shape) -> Value:
    in_shape, out_shape = list(in_shape), list(out_shape)
    if len(in_shape) == len(out_shape) and all(_same(p, q) for p, q in zip(in_shape, out_shape)):
        return x
    has_zero = any(_expr(d).is_Integer and int(_expr(d)) == 0 for d in out_shape)
    entries: list = []
    unknown: list[int] = []
    for i, d in enumerate(out_shape):
        e = _expr(d)
        if e.is_Integer:
            entries.append(int(e))
        elif not has_zero and i < len(in_shape) and _same(in_shape[i], d):
            entries.append(0)
        else:
            entries.append(e)
            unknown.append(i)
    if unknown:
        entries[unknown[0]] = -1
    return m.emit("Reshape", x, m.shape_operand(entries), allowzero=1 if has_zero else 0)


def _reshape_like(m, node, src):
    return _reshape(m, m.v(src), _val(src).shape, _out(node).shape)


@_handles("view", "reshape", "_unsafe_view", "view.default", "flatten.using_ints", "unflatten.int", "_reshape_alias",
          "view_copy", "reshape_as")
def _view(m, node, a):
    return _reshape_like(m, node, a["self"])


def _expand_to(m: _Importer, x: Value, fake_in: torch.Tensor, fake_out: torch.Tensor) -> Value:
    ins, outs = list(fake_in.shape), list(fake_out.shape)
    if len(ins) == len(outs) and all(_same(p, q) for p, q in zip(ins, outs)):
        return x
    entries = []
    off = len(outs) - len(ins)
    for i, d in enumerate(outs):
        j = i - off
        if j >= 0 and _same(ins[j], d):
            entries.append(1)
        else:
            entries.append(d)
    return m.emit("Expand", x, m.shape_operand(entries))


@_handles("expand", "expand_copy", "broadcast_to")
def _expand(m, node, a):
    return _expand_to(m, m.v(a["self"]), _val(a["self"]), _out(node))


@_handles("repeat")
def _repeat(m, node, a):
    x = m.v(a["self"])
    reps = list(m.lit(a["repeats"]))
    r = x.type.rank
    if len(reps) > r:
        x = m.emit("Unsqueeze", x, m.i64(list(range(len(reps) - r))))
    return m.emit("Tile", x, m.shape_operand(reps))


@_handles("permute", "permute_copy")
def _permute(m, node, a):
    r = _rank(a["self"])
    perm = [_norm(int(d), r) for d in a["dims"]]
    if perm == list(range(r)):
        return m.v(a["self"])
    return _transpose_value(m, a["self"], perm)


def _transpose_value(m, src, perm: list[int]) -> Value:
    """Transpose, folded into a new constant when the source is a parameter."""
    if isinstance(src, FxNode) and isinstance(m.env.get(src), _Param):
        users = [u for u in src.users if u.op == "call_function"]
        return m.derived_param(src, perm, exclusive=len(users) == 1)
    return _transpose_const_or_node(m, m.v(src), perm)


def _transpose_const_or_node(m, v: Value, perm: list[int]) -> Value:
    if v.is_constant:
        arr = np.ascontiguousarray(v.const.transpose(perm))
        return m.const(arr, None if arr.size <= 16 else m.g.unique_name(v.name + ".T"))
    return m.emit("Transpose", v, perm=perm)


@_handles("transpose.int", "transpose_copy.int", "swapaxes", "swapdims")
def _transpose(m, node, a):
    r = _rank(a["self"])
    d0, d1 = _norm(int(a.get("dim0", a.get("axis0"))), r), _norm(int(a.get("dim1", a.get("axis1"))), r)
    if d0 == d1:
        return m.v(a["self"])
    perm = list(range(r))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _transpose_value(m, a["self"], perm)


@_handles("t", "numpy_T", "t_copy")
def _t(m, node, a):
    r = _rank(a["self"])
    if r < 2:
        return m.v(a["self"])
    return _transpose_value(m, a["self"], list(reversed(range(r))))


@_handles("unsqueeze", "unsqueeze_copy")
def _unsqueeze(m, node, a):
    r = _rank(a["self"]) + 1
    return m.emit("Unsqueeze", m.v(a["self"]), m.i64([_norm(int(a["dim"]), r)]))


@_handles("squeeze", "squeeze.dim", "squeeze.dims", "squeeze_copy", "squeeze_copy.dim", "squeeze_copy.dims")
def _squeeze(m, node, a):
    fake = _val(a["self"])
    r = fake.dim()
    dims = a.get("dim")
    if dims is None:
        dims = list(range(r))
    elif isinstance(dims, int):
        dims = [dims]
    axes = [d for d in sorted({_norm(int(d), r) for d in dims}) if _expr(fake.shape[d]).is_Integer and int(fake.shape[d]) == 1]
    if not axes:
        return m.v(a["self"])
    return m.emit("Squeeze", m.v(a["self"]), m.i64(axes))


def _bound(m, x) -> Value:
    """A slice bound as a 1-element int64 tensor (ints clamp to the int64 range)."""
    x = m.lit(x)
    if isinstance(x, int):
        return m.i64([max(min(x, _INT64_MAX), -_INT64_MAX)])
    return m.sym_vec(x)


@_handles("slice.Tensor", "slice_copy.Tensor")
def _slice(m, node, a):
    fake_in, fake_out = _val(a["self"]), _out(node)
    r = fake_in.dim()
    dim = _norm(int(a.get("dim", 0)), r)
    start, end, step = a.get("start"), a.get("end"), int(m.lit(a.get("step", 1)) or 1)
    x = m.v(a["self"])
    if step == 1 and _same(fake_in.shape[dim], fake_out.shape[dim]):
        return x
    start = 0 if start is None else start
    end = _INT64_MAX if end is None else end
    return m.emit("Slice", x, _bound(m, start), _bound(m, end), m.i64([dim]), m.i64([step]))


@_handles("narrow")
def _narrow(m, node, a):
    fake_in = _val(a["self"])
    dim = _norm(int(a["dim"]), fake_in.dim())
    start, length = m.lit(a["start"]), m.lit(a["length"])
    end = start + length
    return m.emit("Slice", m.v(a["self"]), _bound(m, start), _bound(m, end), m.i64([dim]))


@_handles("select.int", "select_copy.int")
def _select(m, node, a):
    r = _rank(a["self"])
    idx = m.lit(a["index"])
    ind = m.scalar(int(idx), DType.INT64) if isinstance(idx, int) else m.sym_scalar(idx)
    return m.emit("Gather", m.v(a["self"]), ind, axis=_norm(int(a["dim"]), r))


@_handles("index_select")
def _index_select(m, node, a):
    r = _rank(a["self"])
    return m.emit("Gather", m.v(a["self"]), m.v(a["index"]), axis=_norm(int(a["dim"]), r))


@_handles("gather")
def _gather(m, node, a):
    r = _rank(a["self"])
    return m.emit("GatherElements", m.v(a["self"]), m.v(a["index"]), axis=_norm(int(a["dim"]), r))


@_handles("index.Tensor", "_unsafe_index.Tensor")
def _index(m, node, a):
    fake = _val(a["self"])
    idx = list(a["indices"])
    while idx and idx[-1] is None:
        idx.pop()
    pos = [i for i, t in enumerate(idx) if t is not None]
    if not pos:
        return m.v(a["self"])
    for i in pos:
        if _val(idx[i]).dtype in (torch.bool, torch.uint8):
            raise UnsupportedOpError(f"torch frontend: boolean-mask indexing is data-dependent ({node.name})")
    x = m.v(a["self"])
    if len(pos) == 1:
        return m.emit("Gather", x, m.v(idx[pos[0]]), axis=pos[0])
    r = fake.dim()
    adjacent = pos == list(range(pos[0], pos[0] + len(pos)))
    rest = [i for i in range(r) if i not in pos]
    if pos != list(range(len(pos))):
        x = m.emit("Transpose", x, perm=pos + rest)
    ind, bshape = _stack_indices(m, [idx[i] for i in pos])
    y = m.emit("GatherND", x, ind)
    nb = len(bshape)
    if adjacent and pos[0] > 0:
        p = pos[0]
        perm = list(range(nb, nb + p)) + list(range(nb)) + list(range(nb + p, nb + len(rest)))
        y = m.emit("Transpose", y, perm=perm)
    return y


def _expand_sym(m, x: Value, ins: list, outs: list) -> Value:
    entries = []
    off = len(outs) - len(ins)
    for i, d in enumerate(outs):
        j = i - off
        entries.append(1 if j >= 0 and _same(ins[j], d) else d)
    if all(_expr(e).is_Integer and int(_expr(e)) == 1 for e in entries) and len(ins) == len(outs):
        return x
    return m.emit("Expand", x, m.shape_operand(entries))


@_handles("flip")
def _flip(m, node, a):
    r = _rank(a["self"])
    dims = sorted({_norm(int(d), r) for d in a["dims"]})
    if not dims:
        return m.v(a["self"])
    n = len(dims)
    return m.emit("Slice", m.v(a["self"]), m.i64([-1] * n), m.i64([-_INT64_MAX] * n), m.i64(dims), m.i64([-1] * n))


@_handles("constant_pad_nd")
def _constant_pad(m, node, a):
    x = m.v(a["self"])
    r = _rank(a["self"])
    pad = [int(p) for p in m.lit(a["pad"])]
    k = len(pad) // 2
    axes = [r - 1 - i for i in range(k)]
    pads = pad[0::2] + pad[1::2]
    value = m.lit(a.get("value", 0))
    return m.emit("Pad", x, m.i64(pads), m.scalar(value, x.dtype), m.i64(axes))


@_handles("scatter.src", "scatter.value", "scatter_add", "scatter.reduce", "scatter.value_reduce")
def _scatter(m, node, a):
    x = m.v(a["self"])
    r = _rank(a["self"])
    idx = m.v(a["index"])
    src = a.get("src", a.get("value"))
    if isinstance(src, FxNode) and isinstance(m.env.get(src), (Value, _Param)):
        upd = m.cast(m.v(src), x.dtype)
    else:
        upd = _expand_sym(m, m.scalar(m.lit(src), x.dtype), [], list(_val(a["index"]).shape))
    reduction = "add" if node.target.__name__.startswith("scatter_add") else {None: "none", "add": "add", "multiply": "mul", "sum": "add", "prod": "mul"}.get(a.get("reduce"), a.get("reduce"))
    return m.emit("ScatterElements", x, idx, upd, axis=_norm(int(a["dim"]), r), reduction=reduction)


@_handles("topk")
def _topk(m, node, a):
    x = m.v(a["self"])
    r = _rank(a["self"])
    k = m.lit(a["k"])
    kv = m.i64([int(k)]) if isinstance(k, int) else m.sym_vec(k)
    vals, idx = m.emit("TopK", x, kv, axis=_norm(int(a.get("dim", -1)), r), largest=int(bool(a.get("largest", True))),
                       sorted=1, num_outputs=2)
    return [vals, idx]


@_handles("sort", "sort.stable")
def _sort(m, node, a):
    x = m.v(a["self"])
    fake = _val(a["self"])
    r = fake.dim()
    if r == 0:
        return [x, m.scalar(0, DType.INT64)]
    axis = _norm(int(a.get("dim", -1)), r)
    kv = m.shape_operand([fake.shape[axis]])
    vals, idx = m.emit("TopK", x, kv, axis=axis, largest=int(bool(a.get("descending", False))), sorted=1, num_outputs=2)
    return [vals, idx]


@_handles("cat", "concat", "concatenate")
def _cat(m, node, a):
    dt = _odt(node)
    r = _out(node).dim()
    parts = [t for t in a["tensors"] if not (_val(t).dim() == 1 and r != 1 and _val(t).shape[0] == 0)]
    vals = [m.cast(m.v(t), dt) for t in parts]
    if len(vals) == 1:
        return vals[0]
    return m.emit("Concat", *vals, axis=_norm(int(a.get("dim", 0)), r))


@_handles("stack")
def _stack(m, node, a):
    dt = _odt(node)
    r = _out(node).dim()
    dim = _norm(int(a.get("dim", 0)), r)
    vals = [m.emit("Unsqueeze", m.cast(m.v(t), dt), m.i64([dim])) for t in a["tensors"]]
    return vals[0] if len(vals) == 1 else m.emit("Concat", *vals, axis=dim)


@_handles("split.Tensor", "split_with_sizes", "chunk", "tensor_split.sections", "split.sizes", "unsafe_split.Tensor",
          "split_with_sizes_copy", "split_copy.Tensor", "unbind.int", "unbind_copy.int")
def _split(m, node, a):
    fake_in = _val(a["self"])
    outs = list(_out(node))
    dim = _norm(int(a.get("dim", 0)), fake_in.dim())
    x = m.v(a["self"])
    unbind = node.target.__name__.startswith("unbind")
    if len(outs) == 1:
        return [m.emit("Squeeze", x, m.i64([dim])) if unbind else x]
    sizes = [o.shape[dim] for o in outs] if not unbind else [1] * len(outs)
    parts = m.emit("Split", x, m.shape_operand(sizes), axis=dim, num_outputs=len(outs))
    if unbind:
        parts = [m.emit("Squeeze", p, m.i64([dim])) for p in parts]
    return parts


@_handles("_local_scalar_dense", "item")
def _item(m, node, a):
    """A data-dependent scalar: its (unbacked) symbol is materialized from the tensor itself."""
    val = _out(node)
    v = m.v(a["self"])
    if isinstance(val, torch.SymInt) and val.node.expr.is_Symbol:
        m._sym_cache.setdefault(val.node.expr, m.emit("Reshape", m.cast(v, DType.INT64), m.i64([1])))
    elif isinstance(val, torch.SymFloat) and val.node.expr.is_Symbol:
        m._float_cache.setdefault(val.node.expr, m.emit("Reshape", m.cast(v, DType.FLOAT64), m.i64([])))
    elif isinstance(val, (torch.SymInt, torch.SymFloat)):
        raise UnsupportedOpError(f"torch frontend: data-dependent scalar {val} ({node.name})")
    return val


@_handles("copy")
def _copy(m, node, a):
    dst = a.get("self", a.get("dst"))
    src = a["src"]
    return _expand_sym(m, m.cast(m.v(src), _odt(node)), list(_val(src).shape), list(_out(node).shape))


@_handles("slice_scatter")
def _slice_scatter(m, node, a):
    fx, fs = _val(a["self"]), _val(a["src"])
    r = fx.dim()
    dim = _norm(int(a.get("dim", 0)), r)
    x = m.v(a["self"])
    src = m.cast(m.v(a["src"]), x.dtype)
    n = fs.shape[dim]
    step = int(m.lit(a.get("step", 1)) or 1)
    start = m.lit(a.get("start"))
    start = 0 if start is None else start
    if isinstance(start, int) and start < 0:
        start = _expr(fx.shape[dim]) + start
    if _same(start, 0) and step == 1 and all(_same(p, q) for p, q in zip(fx.shape, fs.shape)):
        return src
    if _expr(n).is_Integer and int(_expr(n)) == 0:
        return x
    s0 = _expr(start)
    lim = s0 + _expr(n) * step
    sv = m.scalar(int(s0), DType.INT64) if s0.is_Integer else m.sym_scalar(s0)
    lv = m.scalar(int(lim), DType.INT64) if lim.is_Integer else m.sym_scalar(lim)
    idx = m.emit("Range", sv, lv, m.scalar(step, DType.INT64))
    others = [i for i in range(r) if i != dim]
    if others:
        idx = m.emit("Unsqueeze", idx, m.i64(others))
    idx = _expand_sym(m, idx, [1] * dim + [n] + [1] * (r - dim - 1), list(fs.shape))
    return m.emit("ScatterElements", x, idx, src, axis=dim)


@_handles("select_scatter")
def _select_scatter(m, node, a):
    fx = _val(a["self"])
    r = fx.dim()
    dim = _norm(int(a["dim"]), r)
    x = m.v(a["self"])
    index = m.lit(a["index"])
    if isinstance(index, int) and index < 0:
        index = _expr(fx.shape[dim]) + index
    e = _expr(index)
    upd = m.emit("Unsqueeze", m.cast(m.v(a["src"]), x.dtype), m.i64([dim]))
    ushape = list(fx.shape)
    ushape[dim] = 1
    iv = m.i64([int(e)] * 1) if e.is_Integer else m.sym_vec(e)
    iv = m.emit("Reshape", iv, m.i64([1] * r))
    idx = _expand_sym(m, iv, [1] * r, ushape)
    return m.emit("ScatterElements", x, idx, upd, axis=dim)


def _stack_indices(m, idx_nodes: list) -> tuple[Value, list]:
    """Broadcast integer index tensors against each other and stack them on a new last axis
    (the indices operand of GatherND / ScatterND)."""
    fakes = [_val(t) for t in idx_nodes]
    bshape = list(torch.broadcast_shapes(*(f.shape for f in fakes)))
    cols = []
    for t, f in zip(idx_nodes, fakes):
        c = m.emit("Unsqueeze", m.cast(m.v(t), DType.INT64), m.i64([-1]))
        cols.append(_expand_sym(m, c, list(f.shape) + [1], bshape + [1]))
    return (cols[0] if len(cols) == 1 else m.emit("Concat", *cols, axis=-1)), bshape


@_handles("index_put", "_unsafe_index_put")
def _index_put(m, node, a):
    fx = _val(a["self"])
    x = m.v(a["self"])
    idx = list(a["indices"])
    while idx and idx[-1] is None:
        idx.pop()
    acc = bool(a.get("accumulate", False))
    vals = a["values"]
    fv = _val(vals)
    v = m.cast(m.v(vals), x.dtype)
    if len(idx) == 1 and idx[0] is not None and _val(idx[0]).dtype in (torch.bool, torch.uint8):
        mfake = _val(idx[0])
        numel = fv.numel() if isinstance(fv, torch.Tensor) else 1
        if not (isinstance(numel, int) and numel == 1):
            raise UnsupportedOpError(f"torch frontend: masked assignment of a non-scalar tensor is data-dependent ({node.name})")
        cond = m.cast(m.v(idx[0]), DType.BOOL)
        extra = fx.dim() - mfake.dim()
        if extra:
            cond = m.emit("Unsqueeze", cond, m.i64(list(range(mfake.dim(), fx.dim()))))
        if v.type.rank:
            v = m.emit("Reshape", v, m.i64([]))
        if acc:
            return m.emit("Add", x, m.emit("Where", cond, v, m.scalar(0, x.dtype)))
        return m.emit("Where", cond, v, x)
    if any(t is None for t in idx) or any(_val(t).dtype in (torch.bool, torch.uint8) for t in idx):
        raise UnsupportedOpError(f"torch frontend: index_put with these indices ({node.name})")
    ind, bshape = _stack_indices(m, idx)
    target = bshape + list(fx.shape[len(idx):])
    v = _expand_sym(m, v, list(fv.shape) if isinstance(fv, torch.Tensor) else [], target)
    return m.emit("ScatterND", x, ind, v, reduction="add" if acc else "none")


# ---------------------------------------------------------------------------------------------
# creation
# ---------------------------------------------------------------------------------------------
def _fill(m: _Importer, node, value) -> Value:
    fake = _out(node)
    dt = torch_dtype(fake.dtype)
    shape = list(fake.shape)
    if isinstance(value, FxNode) and isinstance(m.env.get(value), (Value, _Param)):
        v = m.cast(m.v(value), dt)
        if v.type.rank:
            v = m.emit("Reshape", v, m.i64([]))
        return _expand_sym(m, v, [], shape) if shape else v
    value = m.lit(value)
    static = all(_expr(d).is_Integer for d in shape)
    if isinstance(value, (bool, int, float)):
        if static and math.prod(int(d) for d in shape) <= _FOLD_FILL_ELEMENTS:
            return m.const(np.full([int(d) for d in shape], value, dtype=dt.numpy))
        if not shape:
            return m.scalar(value, dt)
        return m.emit("ConstantOfShape", m.shape_operand(shape), value=np.array([value], dtype=dt.numpy))
    v = m.cast(m.v(value) if isinstance(value, FxNode) else m._scalar_of(value), dt)
    if not shape:
        return v
    return m.emit("Expand", v, m.shape_operand(shape))


@_handles("full", "full_like", "new_full", "scalar_tensor", "fill.Scalar", "fill.Tensor")
def _full(m, node, a):
    value = a.get("fill_value", a.get("s", a.get("value")))
    return _fill(m, node, value)


@_handles("zeros", "zeros_like", "new_zeros", "zero", "empty.memory_format", "empty_like", "new_empty", "empty_strided",
          "new_empty_strided", "empty_permuted")
def _zeros(m, node, a):
    return _fill(m, node, 0)


@_handles("ones", "ones_like", "new_ones")
def _ones(m, node, a):
    return _fill(m, node, 1)


@_handles("arange", "arange.start", "arange.start_step")
def _arange(m, node, a):
    fake = _out(node)
    dt = torch_dtype(fake.dtype)
    start, end, step = m.lit(a.get("start", 0)), m.lit(a["end"]), m.lit(a.get("step", 1))
    if all(isinstance(x, (int, float)) for x in (start, end, step)):
        t = torch.arange(start, end, step, dtype=fake.dtype)
        if t.numel() <= _FOLD_FILL_ELEMENTS:
            return m.const(_to_numpy(t))
    if dt.is_float and not all(isinstance(x, (int, float)) for x in (start, end, step)):
        vals = [m.cast(m.sym_scalar(x) if not isinstance(x, (int, float)) else m.scalar(x, DType.FLOAT64), dt) for x in (start, end, step)]
        return m.emit("Range", *vals)
    vals = [m.scalar(x, dt) if isinstance(x, (int, float)) else m.cast(m.sym_scalar(x), dt) for x in (start, end, step)]
    return m.emit("Range", *vals)


@_handles("tril", "triu")
def _trilu(m, node, a):
    return m.emit("Trilu", m.v(a["self"]), m.scalar(int(m.lit(a.get("diagonal", 0))), DType.INT64),
                  upper=int(node.target.__name__.startswith("triu")))


@_handles("cumsum")
def _cumsum(m, node, a):
    x = m.cast(m.v(a["self"]), _odt(node))
    return m.emit("CumSum", x, m.scalar(_norm(int(a["dim"]), max(x.type.rank, 1)), DType.INT64))


# ---------------------------------------------------------------------------------------------
# reductions and normalizations
# ---------------------------------------------------------------------------------------------
def _axes(a, rank: int) -> list[int] | None:
    dims = a.get("dim")
    if dims is None:
        return None
    if isinstance(dims, int):
        dims = [dims]
    dims = [_norm(int(d), max(rank, 1)) for d in dims]
    return dims or None


def _reduce(op: str, cast_input: bool = True):
    def h(m, node, a):
        x = m.v(a["self"])
        dt = _odt(node)
        if cast_input:
            x = m.cast(x, dt)
        axes = _axes(a, x.type.rank)
        keep = int(bool(a.get("keepdim", False)))
        if x.type.rank == 0:
            return x
        return m.emit(op, x, m.i64(axes) if axes is not None else None, keepdims=keep)

    return h


for _spec, _op in [("mean.dim", "ReduceMean"), ("mean", "ReduceMean"), ("sum.dim_IntList", "ReduceSum"), ("sum", "ReduceSum"),
                   ("amax", "ReduceMax"), ("amin", "ReduceMin"), ("prod.dim_int", "ReduceProd"), ("prod", "ReduceProd")]:
    _handles(_spec)(_reduce(_op))


@_handles("max.dim", "min.dim")
def _max_dim(m, node, a):
    x = m.v(a["self"])
    axis = _norm(int(a["dim"]), max(x.type.rank, 1))
    keep = int(bool(a.get("keepdim", False)))
    is_max = node.target.__name__.startswith("max")
    vals = m.emit("ReduceMax" if is_max else "ReduceMin", x, m.i64([axis]), keepdims=keep)
    idx = m.emit("ArgMax" if is_max else "ArgMin", x, axis=axis, keepdims=keep)
    return [vals, idx]


@_handles("max", "min")
def _max_all(m, node, a):
    x = m.v(a["self"])
    return m.emit("ReduceMax" if node.target.__name__.startswith("max") else "ReduceMin", x, keepdims=0)


@_handles("argmax", "argmin")
def _argmax(m, node, a):
    x = m.v(a["self"])
    op = "ArgMax" if node.target.__name__.startswith("argmax") else "ArgMin"
    dim = a.get("dim")
    keep = int(bool(a.get("keepdim", False)))
    if dim is None:
        flat = m.emit("Reshape", x, m.i64([-1]))
        y = m.emit(op, flat, axis=0, keepdims=0)
        return m.emit("Reshape", y, m.i64([1] * x.type.rank)) if keep else y
    return m.emit(op, x, axis=_norm(int(dim), max(x.type.rank, 1)), keepdims=keep)


@_handles("any", "any.dim", "any.dims", "all", "all.dim", "all.dims")
def _any(m, node, a):
    x = m.cast(m.cast(m.v(a["self"]), DType.BOOL), DType.INT32)
    axes = _axes(a, x.type.rank)
    op = "ReduceMax" if node.target.__name__.startswith("any") else "ReduceMin"
    y = m.emit(op, x, m.i64(axes) if axes is not None else None, keepdims=int(bool(a.get("keepdim", False))))
    return m.cast(y, DType.BOOL)


def _count(m, fake: torch.Tensor, axes: list[int] | None, dt: DType) -> Value:
    dims = [fake.shape[i] for i in (axes if axes is not None else range(fake.dim()))]
    n = math.prod(dims) if dims else 1
    if isinstance(n, int):
        return m.scalar(n, dt)
    return m.cast(m.sym_scalar(n), dt)


def _variance(m, node, a) -> tuple[Value, Value]:
    x = m.v(a["self"])
    fake = _val(a["self"])
    axes = _axes(a, x.type.rank)
    keep = int(bool(a.get("keepdim", False)))
    corr = a.get("correction")
    corr = 1 if corr is None and a.get("unbiased", True) else (corr or 0)
    ax = m.i64(axes) if axes is not None else None
    mean_k = m.emit("ReduceMean", x, ax, keepdims=1)
    d = m.emit("Sub", x, mean_k)
    ss = m.emit("ReduceSum", m.emit("Mul", d, d), ax, keepdims=keep)
    n = _count(m, fake, axes, x.dtype)
    denom = m.emit("Sub", n, m.scalar(float(corr), x.dtype)) if corr else n
    var = m.emit("Div", ss, denom)
    mean = mean_k if keep else m.emit("ReduceMean", x, ax, keepdims=0)
    return var, mean


@_handles("var.correction", "var.dim", "var")
def _var(m, node, a):
    return _variance(m, node, a)[0]


@_handles("std.correction", "std.dim", "std")
def _std(m, node, a):
    return m.emit("Sqrt", _variance(m, node, a)[0])


@_handles("var_mean.correction", "var_mean.dim")
def _var_mean(m, node, a):
    return list(_variance(m, node, a))


def _softmax_input(m, node, a) -> Value:
    x = m.v(a["self"])
    return m.cast(x, _odt(node))


@_handles("softmax.int", "_softmax")
def _softmax(m, node, a):
    x = _softmax_input(m, node, a)
    return m.emit("Softmax", x, axis=_norm(int(a["dim"]), max(x.type.rank, 1)))


@_handles("log_softmax.int", "_log_softmax")
def _log_softmax(m, node, a):
    x = _softmax_input(m, node, a)
    return m.emit("LogSoftmax", x, axis=_norm(int(a["dim"]), max(x.type.rank, 1)))


@_handles("_safe_softmax")
def _safe_softmax(m, node, a):
    """Softmax whose rows that are entirely -inf give 0 instead of NaN."""
    x = _softmax_input(m, node, a)
    axis = _norm(int(a["dim"]), max(x.type.rank, 1))
    y = m.emit("Softmax", x, axis=axis)
    row_max = m.emit("ReduceMax", x, m.i64([axis]), keepdims=1)
    dead = m.emit("Equal", row_max, m.scalar(-np.inf, x.dtype))
    return m.emit("Where", dead, m.scalar(0, x.dtype), y)


def _ones_param(m, fake_shape, dt: DType, value: float = 1.0) -> Value:
    return m.const(np.full([int(d) for d in fake_shape], value, dtype=dt.numpy))


@_handles("layer_norm", "native_layer_norm")
def _layer_norm(m, node, a):
    x = m.v(a["input"])
    nshape = [int(d) for d in m.lit(a["normalized_shape"])]
    scale = m.v(a["weight"]) if a.get("weight") is not None else _ones_param(m, nshape, x.dtype)
    bias = m.v(a["bias"]) if a.get("bias") is not None else None
    eps = float(a.get("eps", 1e-5))
    axis = -len(nshape) if nshape else -1
    if node.target == _overload("native_layer_norm"):
        used = {u.args[1] for u in node.users if u.target is operator.getitem}
        n = 3 if used & {1, 2} else 1
        outs = m.emit("LayerNormalization", x, scale, bias, axis=axis, epsilon=eps, num_outputs=n)
        if n == 1:
            return [outs, None, None]
        mean, rstd = (m.cast(o, x.dtype) for o in outs[1:])
        return [outs[0], mean, rstd]
    return m.emit("LayerNormalization", x, scale, bias, axis=axis, epsilon=eps)


@_handles("rms_norm", "_fused_rms_norm")
def _rms_norm(m, node, a):
    x = m.v(a["input"])
    nshape = [int(d) for d in m.lit(a["normalized_shape"])]
    scale = m.v(a["weight"]) if a.get("weight") is not None else _ones_param(m, nshape, x.dtype)
    eps = a.get("eps")
    if eps is None:
        eps = float(torch.finfo(_val(a["input"]).dtype).eps)
    y = m.emit("RMSNormalization", x, scale, axis=-len(nshape), epsilon=float(eps))
    if node.target == _overload("_fused_rms_norm"):
        return [y, None]
    return y


@_handles("linalg_vector_norm", "norm.ScalarOpt_dim", "frobenius_norm.dim")
def _vector_norm(m, node, a):
    x = m.v(a.get("self", a.get("input")))
    dt = _odt(node)
    x = m.cast(x, dt)
    ord_ = m.lit(a.get("ord", a.get("p", 2)))
    ord_ = 2.0 if ord_ is None else float(ord_)
    axes = _axes(a, x.type.rank)
    ax = m.i64(axes) if axes is not None else None
    keep = int(bool(a.get("keepdim", False)))
    if ord_ == 2:
        return m.emit("ReduceL2", x, ax, keepdims=keep)
    if ord_ == 1:
        return m.emit("ReduceL1", x, ax, keepdims=keep)
    if math.isinf(ord_):
        return m.emit("ReduceMax" if ord_ > 0 else "ReduceMin", m.emit("Abs", x), ax, keepdims=keep)
    if ord_ == 0:
        return m.emit("ReduceSum", m.cast(m.emit("Not", m.emit("Equal", x, m.scalar(0, dt))), dt), ax, keepdims=keep)
    p = m.scalar(ord_, dt)
    s_ = m.emit("ReduceSum", m.emit("Pow", m.emit("Abs", x), p), ax, keepdims=keep)
    return m.emit("Pow", s_, m.scalar(1.0 / ord_, dt))


@_handles("instance_norm")
def _instance_norm(m, node, a):
    x = m.v(a["input"])
    c = int(_val(a["input"]).shape[1])
    scale = m.v(a["weight"]) if a.get("weight") is not None else _ones_param(m, [c], x.dtype)
    bias = m.v(a["bias"]) if a.get("bias") is not None else _ones_param(m, [c], x.dtype, 0.0)
    eps = float(a.get("eps", 1e-5))
    if a.get("use_input_stats", True) or a.get("running_mean") is None:
        return m.emit("InstanceNormalization", x, scale, bias, epsilon=eps)
    return m.emit("BatchNormalization", x, scale, bias, m.v(a["running_mean"]), m.v(a["running_var"]), epsilon=eps)


@_handles("group_norm", "native_group_norm")
def _group_norm(m, node, a):
    x = m.v(a["input"])
    c = int(_val(a["input"]).shape[1])
    groups = int(m.lit(a.get("num_groups", a.get("group"))))
    scale = m.v(a["weight"]) if a.get("weight") is not None else _ones_param(m, [c], x.dtype)
    bias = m.v(a["bias"]) if a.get("bias") is not None else _ones_param(m, [c], x.dtype, 0.0)
    eps = float(a.get("eps", 1e-5))
    y = m.emit("GroupNormalization", x, scale, bias, epsilon=eps, num_groups=groups)
    return [y, None, None] if node.target == _overload("native_group_norm") else y


@_handles("_native_batch_norm_legit_no_training", "batch_norm")
def _batch_norm(m, node, a):
    if node.target == _overload("batch_norm") and a.get("training"):
        raise UnsupportedOpError(f"torch frontend: batch_norm in training mode ({node.name})")
    x = m.v(a["input"])
    c = int(_val(a["input"]).shape[1])
    scale = m.v(a["weight"]) if a.get("weight") is not None else _ones_param(m, [c], x.dtype)
    bias = m.v(a["bias"]) if a.get("bias") is not None else _ones_param(m, [c], x.dtype, 0.0)
    y = m.emit("BatchNormalization", x, scale, bias, m.v(a["running_mean"]), m.v(a["running_var"]),
               epsilon=float(a.get("eps", 1e-5)))
    return y if node.target == _overload("batch_norm") else [y, None, None]


# ---------------------------------------------------------------------------------------------
# linear algebra and attention
# ---------------------------------------------------------------------------------------------
def _linear_weight(m: _Importer, w) -> Value:
    """Wᵀ for ``x @ Wᵀ``: a pre-transposed constant for parameters (named after the state-dict
    key when every use of the parameter is a linear weight, ``<key>.T`` otherwise)."""
    if isinstance(w, FxNode) and isinstance(m.env.get(w), _Param):
        if m.env[w].tensor.dim() != 2:
            return m.v(w)
        only_linear = all(u.target == aten.linear.default and u.args[1] is w and w not in u.args[2:] for u in w.users)
        return m.derived_param(w, [1, 0], exclusive=only_linear)
    wv = m.v(w)
    return wv if wv.type.rank == 1 else _transpose_const_or_node(m, wv, [1, 0])


@_handles("linear")
def _linear(m, node, a):
    x = m.v(a["input"])
    y = m.emit("MatMul", x, _linear_weight(m, a["weight"]))
    if a.get("bias") is not None:
        y = m.emit("Add", y, m.v(a["bias"]))
    return y


@_handles("matmul", "mm", "bmm", "mv", "dot", "vdot")
def _matmul(m, node, a):
    x = m.v(a["self"])
    other = a.get("other", a.get("mat2", a.get("vec", a.get("tensor"))))
    return m.emit("MatMul", x, m.cast(m.v(other), x.dtype))


@_handles("addmm", "baddbmm", "addbmm", "addmv")
def _addmm(m, node, a):
    name = node.target.__name__.split(".")[0]
    a1 = a.get("mat1", a.get("batch1", a.get("mat")))
    a2 = a.get("mat2", a.get("batch2", a.get("vec")))
    y = m.emit("MatMul", m.v(a1), m.v(a2))
    if name == "addbmm":
        y = m.emit("ReduceSum", y, m.i64([0]), keepdims=0)
    dt = y.dtype
    alpha, beta = m.lit(a.get("alpha", 1)), m.lit(a.get("beta", 1))
    if alpha != 1:
        y = m.emit("Mul", y, m.scalar(alpha, dt))
    if beta == 0:
        return y
    c = m.v(a["self"])
    if beta != 1:
        c = m.emit("Mul", c, m.scalar(beta, dt))
    return m.emit("Add", c, y) if node.target == aten.addmm.default else m.emit("Add", y, c)


@_handles("einsum")
def _einsum(m, node, a):
    vals = [m.v(t) for t in a["tensors"]]
    return m.emit("Einsum", *vals, equation=str(a["equation"]).replace(" ", ""))


@_handles("embedding")
def _embedding(m, node, a):
    return m.emit("Gather", m.v(a["weight"]), m.v(a["indices"]), axis=0)


def _causal_mask(m: _Importer, L, S) -> Value:
    """Bool [L, S] keeping key j <= query i (torch's top-left aligned causal mask)."""
    if _expr(L).is_Integer and _expr(S).is_Integer:
        return m.const(np.tril(np.ones((int(L), int(S)), dtype=bool)))
    rows = m.emit("Range", m.scalar(0, DType.INT64), m.sym_scalar(L), m.scalar(1, DType.INT64))
    cols = m.emit("Range", m.scalar(0, DType.INT64), m.sym_scalar(S), m.scalar(1, DType.INT64))
    return m.emit("GreaterOrEqual", m.emit("Unsqueeze", rows, m.i64([1])), m.emit("Unsqueeze", cols, m.i64([0])))


def _attention(m: _Importer, node, q, k, v, mask, is_causal: bool, scale) -> Value:
    fq, fk = _val(q), _val(k)
    qv, kv, vv = m.v(q), m.v(k), m.v(v)
    dt = qv.dtype
    mv = None
    if mask is not None:
        mv = m.v(mask)
        if mv.dtype is not DType.BOOL:
            mv = m.cast(mv, dt)
    L, S = fq.shape[-2], fk.shape[-2]
    causal = 0
    if is_causal:
        if _same(L, S) and mv is None:
            causal = 1
        else:
            cm = _causal_mask(m, L, S)
            if mv is None:
                mv = cm
            elif mv.dtype is DType.BOOL:
                mv = m.emit("And", mv, cm)
            else:
                mv = m.emit("Where", cm, mv, m.scalar(-np.inf, dt))
    attrs = {"is_causal": causal}
    if scale is not None:
        attrs["scale"] = float(scale)
    r = fq.dim()
    if r == 4 and fk.dim() == 4 and _val(v).dim() == 4:
        return m.emit("Attention", qv, kv, vv, mv, **attrs)
    if r == 3 and fk.dim() == 3 and _val(v).dim() == 3:
        ax = m.i64([1])
        if mv is not None and mv.type.rank == 3:
            mv = m.emit("Unsqueeze", mv, ax)
        y = m.emit("Attention", *(m.emit("Unsqueeze", t, ax) for t in (qv, kv, vv)), mv, **attrs)
        return m.emit("Squeeze", y, ax)
    return _attention_math(m, qv, kv, vv, mv, causal, scale, fq)


def _attention_math(m, q, k, v, mask, causal, scale, fq) -> Value:
    dt = q.dtype
    r = q.type.rank
    perm = list(range(r - 2)) + [r - 1, r - 2]
    if scale is None:
        scale = 1.0 / math.sqrt(int(fq.shape[-1]))
    s = m.emit("Mul", m.emit("MatMul", q, m.emit("Transpose", k, perm=perm)), m.scalar(scale, dt))
    if causal:
        mask = _causal_mask(m, fq.shape[-2], fq.shape[-2])
    if mask is not None:
        s = m.emit("Where", mask, s, m.scalar(-np.inf, dt)) if mask.dtype is DType.BOOL else m.emit("Add", s, mask)
    return m.emit("MatMul", m.emit("Softmax", s, axis=-1), v)


@_handles("scaled_dot_product_attention")
def _sdpa(m, node, a):
    return _attention(m, node, a["query"], a["key"], a["value"], a.get("attn_mask"), bool(a.get("is_causal")),
                      a.get("scale"))


@_handles("_scaled_dot_product_flash_attention_for_cpu")
def _sdpa_cpu(m, node, a):
    y = _attention(m, node, a["query"], a["key"], a["value"], a.get("attn_mask"), bool(a.get("is_causal")), a.get("scale"))
    return [y, None]


# ---------------------------------------------------------------------------------------------
# convolution and pooling
# ---------------------------------------------------------------------------------------------
def _ints(x, n: int) -> list[int]:
    x = list(x) if isinstance(x, (list, tuple)) else [x]
    return [int(v) for v in (x * n if len(x) == 1 else x)]


@_handles("convolution", "conv1d", "conv2d", "conv3d", "conv1d.padding", "conv2d.padding", "conv3d.padding",
          "conv_transpose1d", "conv_transpose2d.input", "conv_transpose3d.input")
def _conv(m, node, a):
    x, w = m.v(a["input"]), m.v(a["weight"])
    b = m.v(a["bias"]) if a.get("bias") is not None else None
    n = x.type.rank - 2
    name = node.target.__name__
    transposed = bool(a.get("transposed", False)) or name.startswith("conv_transpose")
    attrs = {"strides": _ints(a.get("stride", 1), n), "dilations": _ints(a.get("dilation", 1), n),
             "group": int(a.get("groups", 1))}
    pad = a.get("padding", 0)
    if isinstance(pad, str):
        if pad == "valid":
            pad = [0] * n
        elif pad == "same":
            attrs["auto_pad"] = "SAME_UPPER"
            pad = None
    if pad is not None:
        p = _ints(pad, n)
        attrs["pads"] = p + p
    if transposed:
        op = _ints(a.get("output_padding", 0), n)
        if any(op):
            attrs["output_padding"] = op
    return m.emit("ConvTranspose" if transposed else "Conv", x, w, b, **attrs)


@_handles("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices")
def _max_pool(m, node, a):
    x = m.v(a["self"])
    n = x.type.rank - 2
    k = _ints(a["kernel_size"], n)
    stride = a.get("stride") or k
    pad = _ints(a.get("padding", 0), n)
    y = m.emit("MaxPool", x, kernel_shape=k, strides=_ints(stride, n), pads=pad + pad,
               dilations=_ints(a.get("dilation", 1), n), ceil_mode=int(bool(a.get("ceil_mode", False))))
    if "with_indices" in node.target.__name__:
        return [y, None]
    return y


@_handles("avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool(m, node, a):
    x = m.v(a["self"])
    n = x.type.rank - 2
    k = _ints(a["kernel_size"], n)
    stride = a.get("stride") or k
    pad = _ints(a.get("padding", 0), n)
    if a.get("divisor_override") is not None:
        raise UnsupportedOpError(f"torch frontend: avg_pool divisor_override ({node.name})")
    return m.emit("AveragePool", x, kernel_shape=k, strides=_ints(stride, n), pads=pad + pad,
                  ceil_mode=int(bool(a.get("ceil_mode", False))), count_include_pad=int(bool(a.get("count_include_pad", True))))


@_handles("adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_avg_pool3d")
def _adaptive_avg_pool(m, node, a):
    x = m.v(a["self"])
    n = x.type.rank - 2
    out = _ints(a["output_size"], n)
    if all(o == 1 for o in out):
        return m.emit("GlobalAveragePool", x)
    spatial = list(_val(a["self"]).shape[2:])
    if all(_expr(d).is_Integer and int(d) % o == 0 for d, o in zip(spatial, out)):
        k = [int(d) // o for d, o in zip(spatial, out)]
        return m.emit("AveragePool", x, kernel_shape=k, strides=k)
    raise UnsupportedOpError(f"torch frontend: adaptive_avg_pool from {spatial} to {out} ({node.name})")
