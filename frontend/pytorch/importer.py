"""The importer: walks the FX graph of an exported program once and emits IR through the
handlers.

It holds what one import needs: FX node → IR value (or lifted parameter, or python / symbolic
scalar), and the symbolic sizes. A SymInt stays a sympy expression and is *materialized*
(``Shape`` → ``Mul`` ...) only where a tensor op needs its value, from a tensor that has it as a
dim. Handlers (``handlers_*.py``) read FX arguments with ``v`` / ``lit`` / ``operand`` and build
IR with the emitting helpers (``emit``, ``const``, ``cast``, ``reshape``, ``expand``,
``shape_operand``, ...); the functions at the end of this module read FX metadata for them.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import sympy
import torch
import torch.fx

from ...ir import DType, Graph, IRError, TensorType, UnsupportedOpError, Value
from ...ir.folding import eliminate_dead_code
from ...ir.tying import tie_transposed_weights
from ...ir.symbolic import mul_dims
from .decomposition import Refused, decomposable
from .dtypes import to_numpy, torch_dtype
from .naming import output_names, sanitize
from .registry import HANDLERS, FxNode, inlined_region, is_dropped, target_name
from .sizes import is_sym_value, same_size, size_expr


@dataclass
class Param:
    """A lifted parameter, buffer or tensor constant, added to the graph on first use."""

    key: str
    tensor: torch.Tensor
    value: Value | None = None


class Importer:
    """One import of one exported program into a new graph (``run``)."""

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
        e = size_expr(d)
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

    def _folded(self, array: np.ndarray, name: str) -> Value:
        """A constant computed at import time from another: shared when small, else named."""
        return self.const(array, None if array.size <= 16 else self.g.unique_name(name))

    def scalar(self, value, dtype: DType) -> Value:
        """A 0-d constant of ``dtype``."""
        return self.const(np.array(value, dtype=dtype.numpy))

    def i64(self, values) -> Value:
        return self.const(np.asarray(values, dtype=np.int64))

    def cast(self, v: Value, dtype: DType) -> Value:
        if v.dtype == dtype:
            return v
        if v.is_constant:
            return self._folded(v.const.astype(dtype.numpy), f"{v.name}.{dtype.value}")
        return self.emit("Cast", v, to=dtype)

    def transpose(self, v: Value, perm: list[int]) -> Value:
        """``Transpose``, folded into a new constant when ``v`` is one."""
        if v.is_constant:
            return self._folded(np.ascontiguousarray(v.const.transpose(perm)), v.name + ".T")
        return self.emit("Transpose", v, perm=perm)

    def reshape(self, x: Value, in_shape, out_shape) -> Value:
        """``Reshape`` from ``in_shape`` to ``out_shape`` (torch's sizes). The target is folded:
        a dim equal to the input's at the same position becomes ``0``, one remaining symbolic
        dim ``-1``, so it is usually a constant."""
        in_shape, out_shape = list(in_shape), list(out_shape)
        if len(in_shape) == len(out_shape) and all(same_size(p, q) for p, q in zip(in_shape, out_shape)):
            return x
        has_zero = any(size_expr(d).is_Integer and int(size_expr(d)) == 0 for d in out_shape)
        entries: list = []
        unknown: list[int] = []
        for i, d in enumerate(out_shape):
            e = size_expr(d)
            if e.is_Integer:
                entries.append(int(e))
            elif not has_zero and i < len(in_shape) and same_size(in_shape[i], d):
                entries.append(0)
            else:
                entries.append(e)
                unknown.append(i)
        if unknown:
            entries[unknown[0]] = -1
        return self.emit("Reshape", x, self.shape_operand(entries), allowzero=1 if has_zero else 0)

    def expand(self, x: Value, in_shape, out_shape) -> Value:
        """``Expand`` (numpy broadcasting) from ``in_shape`` to ``out_shape``; a dim that does
        not change becomes ``1`` in the target, so it is usually a constant."""
        ins, outs = list(in_shape), list(out_shape)
        if len(ins) == len(outs) and all(same_size(p, q) for p, q in zip(ins, outs)):
            return x
        off = len(outs) - len(ins)
        entries = [1 if i >= off and same_size(ins[i - off], d) else d for i, d in enumerate(outs)]
        return self.emit("Expand", x, self.shape_operand(entries))

    # -- symbolic values -----------------------------------------------------------------------
    def sym_vec(self, x) -> Value:
        """A 1-element int64 tensor holding the value of a SymInt / int / sympy expression."""
        e = size_expr(x)
        hit = self._sym_cache.get(e)
        if hit is not None:
            return hit
        v = self._materialize(e)
        self._sym_cache[e] = v
        return v

    def sym_scalar(self, x) -> Value:
        """A 0-d int64 tensor holding the value of a SymInt / int / sympy expression."""
        e = size_expr(x)
        if e.is_Integer:
            return self.scalar(int(e), DType.INT64)
        hit = self._scalar_cache.get(e)
        if hit is None:
            hit = self.emit("Squeeze", self.sym_vec(e), self.i64([0]))
            self._scalar_cache[e] = hit
        return hit

    def define_int_symbol(self, sym, vec: Value) -> None:
        """Take ``vec`` (1-element int64) as the value of an unbacked SymInt symbol."""
        self._sym_cache.setdefault(sym, vec)

    def define_float_symbol(self, sym, scalar: Value) -> None:
        """Take ``scalar`` (0-d float64) as the value of an unbacked SymFloat symbol."""
        self._float_cache.setdefault(sym, scalar)

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
        if all(size_expr(x).is_Integer for x in entries):
            return self.i64([int(size_expr(x)) for x in entries])
        key = tuple(size_expr(x) for x in entries)
        hit = self._shape_cache.get(key)
        if hit is not None:
            return hit
        pieces: list[Value] = []
        run: list[int] = []
        for x in entries:
            e = size_expr(x)
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
    def is_tensor(self, a) -> bool:
        """Whether an FX argument is a tensor (an IR value or a lifted parameter)."""
        return isinstance(a, FxNode) and isinstance(self.env.get(a), (Value, Param))

    def is_param(self, a) -> bool:
        """Whether an FX argument is a lifted parameter, buffer or tensor constant."""
        return isinstance(a, FxNode) and isinstance(self.env.get(a), Param)

    def v(self, a) -> Value:
        """The IR tensor for an FX argument (a node, or a python scalar → 0-d constant)."""
        if isinstance(a, FxNode):
            e = self.env.get(a)
            if isinstance(e, Value):
                return e
            if isinstance(e, Param):
                return self.param_value(e)
            if is_sym_value(e):
                return self.scalar_of(e)
            raise IRError(f"torch frontend: {a.name} is not a tensor")
        if isinstance(a, (bool, int, float)) or is_sym_value(a):
            return self.scalar_of(a)
        raise IRError(f"torch frontend: expected a tensor, got {a!r}")

    def scalar_of(self, s) -> Value:
        """A 0-d tensor for a python or symbolic scalar (bool, int64, float32 / float64)."""
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
            if isinstance(e, (Value, Param)):
                raise IRError(f"torch frontend: {a.name} is a tensor where a scalar was expected")
            return e
        if isinstance(a, (list, tuple)):
            return type(a)(self.lit(x) for x in a)
        return a

    def derived_param(self, src: FxNode, perm: list[int], exclusive: bool) -> Value:
        """A parameter transposed at import time. It keeps the state-dict key as its name when
        no other use needs the original layout, else it is ``<key>.T``."""
        p: Param = self.env[src]
        key = (id(p), tuple(perm))
        hit = self._derived.get(key)
        if hit is None:
            arr = np.ascontiguousarray(to_numpy(p.tensor).transpose(perm))
            name = sanitize(p.key) if exclusive and p.value is None else sanitize(p.key) + ".T"
            hit = self._derived[key] = self.g.add_constant(arr, self.g.unique_name(name))
        return hit

    def param_value(self, p: Param) -> Value:
        if p.value is None:
            p.value = self.g.add_constant(to_numpy(p.tensor), self.g.unique_name(sanitize(p.key)))
        return p.value

    def operand(self, a, dtype: DType) -> Value:
        """An FX argument as a tensor of ``dtype`` (python scalars become constants of it)."""
        if self.is_tensor(a):
            return self.cast(self.v(a), dtype)
        s = self.lit(a)
        if isinstance(s, (bool, int, float)):
            return self.scalar(s, dtype)
        return self.cast(self.scalar_of(s), dtype)

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> Graph:
        ep, g = self.ep, self.g
        sig = ep.graph_signature
        specs = {s.arg.name: s for s in sig.input_specs}
        out_names = output_names(ep)
        self._reserved = set(out_names)
        placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
        for node in placeholders:
            spec = specs.get(node.name)
            kind = spec.kind.name if spec is not None else "USER_INPUT"
            val = node.meta.get("val")
            if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
                tensor = _lookup_state(ep, spec.target)
                self.env[node] = Param(spec.target, tensor)
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
        tie_transposed_weights(g)  # a tied head reads the embedding table pre-transposed (derived_param)
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
                    self.env[node] = Param(node.target, self.env[node])
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
        if is_dropped(t):
            return None
        h = HANDLERS.get(t)
        if h is not None:
            try:
                return h(self, node, bind_args(node))
            except UnsupportedOpError as e:
                if decomposable(t):
                    raise Refused(t, e) from None
                raise
        if isinstance(t, torch._ops.HigherOrderOperator):
            return self._hop(node)
        if is_sym_value(val):
            return val  # size arithmetic: kept as an expression, materialized on demand
        raise UnsupportedOpError(f"torch frontend: no mapping for {target_name(t)} (fx node {node.name})")

    def _hop(self, node: FxNode):
        region = inlined_region(node)
        if region is None:
            name = node.target.__name__
            raise UnsupportedOpError(f"torch frontend: no mapping for higher-order op {name} (fx node {node.name})")
        sub, args = region
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
        name = sanitize(name)
        if name in self._reserved:
            name = name + "_"
        return self.g.unique_name(name)

    def _refine(self, v: Value, fake: torch.Tensor, node: FxNode) -> None:
        if v.producer is None or id(v) in self._named:
            return
        want = self.ttype(fake)
        have = v.type
        where = f"torch frontend: {node.name} ({target_name(node.target)})"
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
    def _set_outputs(self, results: list, names: list[str]) -> None:
        g = self.g
        self._reserved = set()
        outs: list[Value] = []
        for r, name in zip(results, names):
            if isinstance(r, Param):
                r = self.param_value(r)
            elif not isinstance(r, Value):
                if r is None:
                    continue
                r = self.scalar_of(r) if is_sym_value(r) else None
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


# -- FX metadata, for the handlers -------------------------------------------------------------
def bind_args(node: FxNode) -> dict:
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


def fake_of(a):
    """What an FX argument stands for at export time: a node's FakeTensor (or SymInt ...), or
    the python value itself."""
    return a.meta.get("val") if isinstance(a, FxNode) else a


def out_fake(node: FxNode):
    """The FakeTensor (or list of them) a node produces."""
    return node.meta["val"]


def out_dtype(node: FxNode) -> DType:
    """The IR element type of the tensor a node produces."""
    return torch_dtype(node.meta["val"].dtype)


def rank_of(a) -> int:
    return fake_of(a).dim()


def norm_axis(axis: int, rank: int) -> int:
    """``axis`` made non-negative."""
    return axis + rank if axis < 0 else axis
