"""IR → TVM Relax.

``lower_to_relax(graph, target)`` builds a Relax ``main`` with the ``BlockBuilder``:

* its parameters are the graph inputs; every named symbolic dim (``batch``, ``seq``) becomes one
  shared ``tirx.Var``, and products such as ``batch*seq`` become expressions of those vars, so a
  module compiled with symbolic dims runs at any size;
* constants are embedded as Relax constants;
* every node is lowered by the function registered for its op in ``codegen.lowering``
  (``@lowering("Add")``), one module per op family;
* the outputs are returned as a tuple, in graph-output order.

The IR's types stay the authority on shapes. After each node the shape Relax inferred is compared
with the IR's declared one; where Relax lost track (a shape only known at run time) the value is
``match_cast`` to the IR's shape, with a fresh symbolic var for each dim the IR does not know
either. Shape *operands* (a Reshape target, Slice bounds, Range limits) are read from the IR's
constants and symbolic values (``Value.sym``) whenever they are known, so exporters' shape chains
(``Shape → Gather → Concat → Reshape``) lower to static or symbolic shapes, not run-time
tensors.

Assumptions a lowering makes about symbolic dims that it cannot express in Relax (e.g. that a
slice end ``seq`` lies inside a 512-row table) are recorded on the result as ``assumptions`` and
checked by the runtime before every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..ir import DType, Graph, Node, UnsupportedOpError, Value
from ..ir.errors import IRError, OptcError
from ..ir.symbolic import Monomial


TVM_DTYPE: dict[DType, str] = {d: d.long_name for d in DType}


class LoweringError(OptcError):
    """A node the lowering accepted but could not express in Relax (a bug or a gap in optc)."""


@dataclass(frozen=True)
class Assumption:
    """A condition on symbolic dims a lowering relied on, e.g. ``seq <= 512``. ``lhs`` is a
    dim (int or symbolic string), ``op`` one of ``<=``, ``>=``, ``==``, ``rhs`` an int."""

    lhs: Any
    op: str
    rhs: int
    why: str

    def holds(self, bindings: dict[str, int]) -> bool | None:
        from ..ir.interpreter.engine import eval_dim

        v = eval_dim(self.lhs, bindings)
        if v is None:
            return None
        return {"<=": v <= self.rhs, ">=": v >= self.rhs, "==": v == self.rhs}[self.op]

    def describe(self) -> str:
        return f"{self.lhs} {self.op} {self.rhs} ({self.why})"

    def to_json(self) -> dict:
        return {"lhs": self.lhs, "op": self.op, "rhs": self.rhs, "why": self.why}


@dataclass
class Lowered:
    """What ``lower`` produces: the module, and the facts the runtime needs."""

    mod: Any  # tvm.IRModule
    assumptions: list[Assumption] = field(default_factory=list)
    match_casts: int = 0  # how many values needed a run-time shape match (for diagnostics)


class LowerContext:
    """State while one graph is lowered; lowering functions get it as their first argument."""

    def __init__(self, graph: Graph, target):
        import tvm
        from tvm import relax, tirx

        self.tvm, self.relax, self.tirx = tvm, relax, tirx
        from tvm.relax import op as R

        self.R = R
        self.graph = graph
        self.target = target
        self.bb = relax.BlockBuilder()
        self.vars: dict[str, Any] = {}  # symbolic dim name -> tirx.Var
        self.values: dict[int, Any] = {}  # id(ir Value) -> relax Expr
        self.assumptions: list[Assumption] = []
        self.match_casts = 0
        self._fresh = 0
        from tvm.sym import Analyzer

        self.analyzer = Analyzer()
        self.node: Node | None = None

    # -- dims -----------------------------------------------------------------------------------
    def sym_var(self, name: str):
        v = self.vars.get(name)
        if v is None:
            v = self.vars[name] = self.tirx.Var(name, "int64")
        return v

    def fresh_var(self, hint: str = "n"):
        self._fresh += 1
        return self.tirx.Var(f"{hint}_{self._fresh}", "int64")

    def dim(self, d, *, fresh_for_unknown: bool = False):
        """An IR dim as a PrimExpr (int64): ints stay ints, symbolic monomials become products of
        the shared vars. Unknown dims give None (or a fresh var)."""
        if isinstance(d, (int, np.integer)):
            return self.tirx.IntImm("int64", int(d))
        if d is None:
            return self.fresh_var() if fresh_for_unknown else None
        m = Monomial.of(d)
        if m is None:
            return self.fresh_var() if fresh_for_unknown else None
        expr = self.tirx.IntImm("int64", m.coef)
        first = m.coef == 1
        for name in sorted(m.symbols.elements()):
            v = self.sym_var(name)
            expr = v if first else expr * v
            first = False
        return expr

    def int_or_expr(self, d):
        """Like ``dim`` but returns a Python int for static dims (what relax.op signatures like)."""
        if isinstance(d, (int, np.integer)):
            return int(d)
        return self.dim(d)

    # -- values ---------------------------------------------------------------------------------
    def __getitem__(self, v: Value):
        return self.values[id(v)]

    def ty(self, expr):
        """Relax's type of ``expr`` (normalizing an expression not emitted yet)."""
        t = expr.ty
        if not isinstance(t, (self.relax.TensorType, self.relax.TupleType, self.relax.ShapeType)):
            t = self.bb.normalize(expr).ty
        return t

    def shape(self, expr) -> list | None:
        """The static/symbolic shape Relax knows for ``expr`` (PrimExprs; ints where constant), or
        None when only the rank is known."""
        t = self.ty(expr)
        if t.shape is None:
            return None
        out = []
        for d in t.shape.values:
            out.append(int(d.value) if isinstance(d, self.tirx.IntImm) else d)
        return out

    def static_shape(self, expr) -> list[int] | None:
        s = self.shape(expr)
        if s is None or not all(isinstance(d, int) for d in s):
            return None
        return s

    def rank(self, expr) -> int:
        return int(self.ty(expr).ndim)

    def dtype(self, expr) -> str:
        return str(self.ty(expr).dtype)

    def emit(self, expr, name: str = ""):
        return self.bb.emit(expr, name_hint=name)

    def const(self, array, dtype: str | None = None):
        array = np.asarray(array)
        if dtype is not None and str(array.dtype) != dtype:
            array = array.astype(dtype)
        return self.relax.const(array, str(array.dtype) if dtype is None else dtype)

    def scalar(self, value, dtype: str):
        """A 0-d constant of ``dtype``."""
        if dtype == "bfloat16":
            import ml_dtypes

            return self.relax.const(np.asarray(value, dtype=np.float32).astype(ml_dtypes.bfloat16), dtype)
        return self.relax.const(np.asarray(value, dtype=dtype), dtype)

    def fail(self, msg: str) -> UnsupportedOpError:
        n = self.node
        where = f" (node {n.name}, op {n.op})" if n is not None else ""
        return UnsupportedOpError(f"cannot compile: {msg}{where}")

    def assume(self, lhs, op: str, rhs: int, why: str) -> None:
        a = Assumption(lhs, op, int(rhs), why)
        if a not in self.assumptions:
            self.assumptions.append(a)

    # -- shape operands ------------------------------------------------------------------------
    def known_ints(self, v: Value | None) -> list | None:
        """The contents of a small integer tensor as ints / symbolic dims (strings), when the IR
        knows them statically (a constant or a folded shape chain)."""
        if v is None:
            return None
        if v.const is not None:
            c = v.const
            if c.dtype.kind in "iub":
                return [int(x) for x in c.reshape(-1)]
            return None
        s = v.sym
        if s is None or any(d is None for d in s):
            return None
        return list(s)

    def operand_exprs(self, v: Value, what: str) -> list:
        """A shape-like operand (1-D int tensor) as a list of int / PrimExpr: from the IR when it
        is known statically, otherwise read at run time (``tensor_to_shape`` + ``match_cast``
        to fresh vars)."""
        known = self.known_ints(v)
        if known is not None:
            return [self.int_or_expr(d) for d in known]
        return self.runtime_shape(self[v], what)

    def runtime_shape(self, x, what: str) -> list:
        """The contents of a 1-D int tensor ``x`` known only at run time, as fresh vars."""
        return self.runtime_shape_var(x, what)[1]

    def runtime_shape_var(self, x, what: str):
        """``(shape, vars)``: the run-time contents of the 1-D int tensor ``x`` as a Relax shape
        value and as the fresh symbolic vars it binds. Use the shape value where an op takes
        one (e.g. ``reshape``): TVM's dead-code elimination only sees Relax vars, and would drop
        a ``match_cast`` whose symbolic vars are used only inside shapes."""
        shp = self.static_shape(x)
        if shp is None or len(shp) != 1:
            raise self.fail(f"{what} must be a 1-D tensor of static length to be read at run time")
        if self.dtype(x) != "int64":
            x = self.emit(self.R.astype(x, "int64"))
        s = self.emit(self.R.tensor_to_shape(x))
        fresh = [self.fresh_var(what.replace(" ", "_")) for _ in range(shp[0])]
        self.match_casts += 1
        sv = self.bb.match_cast(s, self.relax.ShapeType(fresh))
        return sv, list(fresh)

    def scalar_operand(self, v: Value, what: str):
        """A 0-d or 1-element integer operand as an int / PrimExpr."""
        known = self.known_ints(v)
        if known is not None:
            if len(known) != 1:
                raise self.fail(f"{what} must hold one element")
            return self.int_or_expr(known[0])
        x = self[v]
        if self.rank(x) == 0:
            x = self.emit(self.R.reshape(x, [1]))
        if v.dtype.is_float:
            raise self.fail(f"{what} is a float known only at run time")
        return self.runtime_shape(x, what)[0]

    # -- shapes: reconcile Relax's view with the IR's ----------------------------------------
    def _simple(self, e) -> bool:
        """Whether a PrimExpr is a product of ints and vars (what the IR's monomials express)."""
        tirx = self.tirx
        if isinstance(e, (int, tirx.IntImm, tirx.Var)):
            return True
        if isinstance(e, tirx.Mul):
            return self._simple(e.a) and self._simple(e.b)
        return False

    def reconcile(self, expr, v: Value):
        """Make ``expr`` carry the IR type of ``v`` (dtype checked, shape matched at run time
        where Relax does not know it)."""
        t = expr.ty
        relax = self.relax
        if not isinstance(t, relax.TensorType):
            return expr
        want_dt = TVM_DTYPE[v.dtype]
        if str(t.dtype) != want_dt:
            expr = self.emit(self.R.astype(expr, want_dt))
            t = expr.ty
        if v.shape is None:
            return expr
        have = self.shape(expr)
        if have is not None and len(have) != len(v.shape):
            raise LoweringError(f"node {self.node.name if self.node else '?'}: Relax inferred rank {len(have)} "
                                f"for %{v.name}, the IR says {v.type}")
        target = []
        changed = False
        for i, d in enumerate(v.shape):
            h = have[i] if have is not None else None
            if d is None:
                if h is not None and self._simple(h):
                    target.append(h)
                else:
                    target.append(self.fresh_var("d"))
                    changed = True
                continue
            want = self.dim(d, fresh_for_unknown=True)
            if h is None:
                target.append(want)
                changed = True
            elif isinstance(h, int) and isinstance(want, self.tirx.IntImm):
                if h != int(want.value):
                    raise LoweringError(f"node {self.node.name if self.node else '?'}: Relax inferred dim {i} = {h} "
                                        f"for %{v.name}, the IR says {v.type}")
                target.append(want)
            elif self.analyzer.can_prove_equal(_as_expr(self.tirx, h), want):
                target.append(h)
            elif not self._simple(h):
                # Relax holds a clamp (min/max/select) the IR resolved; matching it against a
                # var it contains trips TVM's binding canonicalization, so keep Relax's dim.
                target.append(h)
            else:
                target.append(want)
                changed = True
        if not changed:
            return expr
        self.match_casts += 1
        return self.bb.match_cast(expr, relax.TensorType([_as_expr(self.tirx, d) for d in target], want_dt))


def _as_expr(tirx, d):
    return tirx.IntImm("int64", d) if isinstance(d, int) else d


# -----------------------------------------------------------------------------------------------
def lower(graph: Graph, target=None) -> Lowered:
    """Lower ``graph`` to a Relax IRModule (see the module docstring)."""
    from . import lowering as registry

    ctx = LowerContext(graph, target)
    relax, R = ctx.relax, ctx.R
    bb = ctx.bb
    # Find every op first: an unsupported op is reported before any work (and names the node).
    for node in graph.nodes:
        if registry.get_lowering(node.op) is None:
            raise UnsupportedOpError(f"cannot compile op {node.op!r} (node {node.name}): no lowering to TVM yet")
    params = []
    for v in graph.inputs:
        if v.shape is None:
            raise UnsupportedOpError(f"cannot compile input {v.name!r}: its rank is unknown")
        shape = [ctx.dim(d, fresh_for_unknown=True) for d in v.shape]
        p = relax.Var(v.name, relax.TensorType(shape, TVM_DTYPE[v.dtype]))
        params.append(p)
        ctx.values[id(v)] = p
    for v in graph.constants.values():
        ctx.values[id(v)] = relax.const(np.array(v.const, order="C", copy=None), TVM_DTYPE[v.dtype])

    with bb.function("main", params):
        with bb.dataflow():
            for node in graph.nodes:
                ctx.node = node
                fn = registry.get_lowering(node.op)
                args = [None if v is None else ctx[v] for v in node.inputs]
                try:
                    result = fn(ctx, node, *args)
                except (UnsupportedOpError, LoweringError):
                    raise
                except IRError as e:
                    raise UnsupportedOpError(f"cannot compile node {node.name} ({node.op}): {e}") from e
                except Exception as e:  # TVM's own checks (shape inference) raise TVMError subclasses
                    raise LoweringError(f"lowering node {node.name} ({node.op}) failed: {type(e).__name__}: "
                                        f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}") from e
                if not isinstance(result, (list, tuple)):
                    result = (result,)
                if len(result) < len(node.outputs):
                    raise LoweringError(f"lowering of {node.op} gave {len(result)} outputs, node {node.name} has {len(node.outputs)}")
                for out, r in zip(node.outputs, result):
                    if not isinstance(r, (relax.Var, type(relax.const(0.0)))):
                        r = ctx.emit(r)
                    ctx.values[id(out)] = ctx.reconcile(r, out)
            ctx.node = None
            outs = [ctx[v] for v in graph.outputs]
            gv = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(gv)
    mod = bb.get()
    return Lowered(mod, ctx.assumptions, ctx.match_casts)


def lower_to_relax(graph: Graph, target=None):
    """The Relax ``IRModule`` of ``graph`` (``main`` takes the graph inputs, returns a tuple of
    the outputs in graph-output order). Raises ``UnsupportedOpError`` naming the op and node for
    anything the compiler cannot lower."""
    return lower(graph, target).mod
