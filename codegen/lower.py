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
slice end ``seq`` lies inside a 512-row table) are recorded on the result as ``assumptions``: the
Python runtime checks them before every call, and a checked module (``checked=True``, the
default) also checks them itself, before the kernel that relies on them.

Run-time checks (``LowerContext.check_each`` / ``check_once``, kernels in ``codegen/checks.py``)
make the compiled module memory-safe by default: every index read from data, every integer
divisor, every broadcast known only at run time and every assumption is verified inside the
module before the kernel that depends on it, and a failure raises a one-line
``InvalidValueError`` naming the node (``ir/checks.py`` holds the wording, shared with the
reference interpreter). ``checked=False`` drops them: the module then trusts its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import functools

import numpy as np

from ..ir import DType, Graph, Node, UnsupportedOpError, Value
from ..ir import checks as ir_checks
from ..ir.errors import InvalidValueError, IRError, OptcError
from ..ir.symbolic import Polynomial
from .storage import check_node as check_storage, to_storage, tvm_dtype


TVM_DTYPE: dict[DType, str] = {d: tvm_dtype(d) for d in DType}
"""The TVM dtype each IR element type is held in (its storage dtype: ``codegen/storage.py``)."""


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
        from ..ir.signature import eval_dim

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
    checks: list[str] = field(default_factory=list)  # the message of every run-time check compiled in
    branches: bool = False  # lowered into plain binding blocks (a run-time branch)


class LowerContext:
    """State while one graph is lowered; lowering functions get it as their first argument.

    Run-time checks. A lowering whose kernel reads or writes at positions taken from data, divides
    integers, or relies on a shape fact only known at run time declares a check on the tensor the
    kernel reads, and feeds the kernel the value the check returns (the same buffer, ordered after
    the check by data flow):

        idx = ctx.check_each(idx, lambda v, pos, n: (v >= -n) & (v < n),
                             checks.index_out_of_range(dim, axis), [extent])
        x = ctx.check_once(x, lambda t, d: (t == d) | (t == 1), checks.cannot_broadcast(i, d, None), [t, d])

    * ``check_each(x, ok, what, args)``: ``ok(element, position, *args)`` must hold for every
      element of ``x`` (the element arrives as an int64 PrimExpr for integer tensors);
    * ``check_once(x, ok, what, args)``: ``ok(*args)`` must hold once (dims, run-time shape values);
      proven statically when it can be (true: no kernel; false: an ``InvalidValueError`` now);
    * ``args`` are ints or PrimExprs over the module's symbolic dims (the vars of ``dim``, of
      ``runtime_shape``, of Relax shapes); ``ok`` receives them as TIR scalars;
    * ``what`` is the shared wording from ``ir/checks.py`` (``index_out_of_range``,
      ``DIVISION_BY_ZERO``, ...); the message becomes ``node NAME (Op): what``, and the reference
      interpreter's kernel must raise the same (``ir.checks.invalid(node, what)``);
    * ``check_index(x, v, extent, axis, dim, wrap=True)`` is the common case: static indices are
      checked now, indices provably in range (``int_range``) cost nothing, the rest get
      ``check_each`` (after the wrap of negative indices, so the wrap fuses with their producer).

    A constant is not checked element by element at run time (``check_each`` refuses it): check
    it here and raise ``self.invalid(what)``; ``check_once`` and ``check_index`` accept constants.
    Independent checks run in no fixed order. ``ctx.checked`` is False for ``build(..., checked=False)``: the check methods then return
    their input unchanged (static violations still fail the build). An ``assume`` must be
    followed by ``enforce_assumptions(x)`` on the tensor the relying kernel reads.
    """

    def __init__(self, graph: Graph, target, checked: bool = True, builder=None):
        import tvm
        from tvm import relax, tirx

        self.tvm, self.relax, self.tirx = tvm, relax, tirx
        from tvm.relax import op as R

        self.R = R
        self.graph = graph
        self.target = target
        self.bb = builder if builder is not None else relax.BlockBuilder()
        self.vars: dict[str, Any] = {}  # symbolic dim name -> tirx.Var
        self.values: dict[int, Any] = {}  # id(ir Value) -> relax Expr
        self.assumptions: list[Assumption] = []
        self.match_casts = 0
        self._fresh = 0
        from tvm.sym import Analyzer

        self.analyzer = Analyzer()
        self.node: Node | None = None
        self.dataflow = True  # False when main is lowered into plain binding blocks (relax.If)
        self.checked = checked
        self.checks: list[str] = []  # messages of the run-time checks emitted
        self._unenforced: list[Assumption] = []  # assumed by the current node, not yet checked
        self._ranges: dict[int, tuple[int, int] | None] = {}
        self._dims_checked: set[str] = set()

    # -- dims -----------------------------------------------------------------------------------
    def sym_var(self, name: str):
        v = self.vars.get(name)
        if v is None:
            from tvm.sym import ConstIntBound

            v = self.vars[name] = self.tirx.Var(name, "int64")
            # symbolic dims are >= 1 at run time (check_inputs and check_input_dims refuse 0)
            self.analyzer.update(v, ConstIntBound(1, ConstIntBound.POS_INF))
        return v

    def fresh_var(self, hint: str = "n"):
        self._fresh += 1
        return self.tirx.Var(f"{hint}_{self._fresh}", "int64")

    def dim(self, d, *, fresh_for_unknown: bool = False):
        """An IR dim as a PrimExpr (int64): ints stay ints, symbolic monomials become products of
        the shared vars, sums (``past+seq``) sums of them. Unknown dims give None (or a fresh var)."""
        if isinstance(d, (int, np.integer)):
            return self.tirx.IntImm("int64", int(d))
        if d is None:
            return self.fresh_var() if fresh_for_unknown else None
        p = Polynomial.of(d)
        if p is None:
            return self.fresh_var() if fresh_for_unknown else None
        total = None
        for syms, coef in sorted(p.terms.items(), key=lambda kv: (-len(kv[0]), kv[0])):
            term = None if coef == 1 and syms else self.tirx.IntImm("int64", coef)
            for name in syms:
                v = self.sym_var(name)
                term = v if term is None else term * v
            total = term if total is None else total + term
        return total

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
        """Bind ``expr`` to a variable; a variable is returned as it is (an alias binding
        ``lv1 = lv0`` would stop FuseOps from fusing the producer with its consumers)."""
        if isinstance(expr, self.relax.Var):
            return expr
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
        """Record that the current node relies on ``lhs op rhs`` (``lhs`` an IR dim); the
        lowering must then ``enforce_assumptions`` on the tensor its kernel reads."""
        a = Assumption(lhs, op, int(rhs), why)
        if a not in self.assumptions:
            self.assumptions.append(a)
        self._unenforced.append(a)

    # -- run-time checks (see the class docstring) -------------------------------------------
    def invalid(self, what: str) -> InvalidValueError:
        """The compile-time error for a value the current node cannot take (e.g. a constant
        index out of range), in the wording of ``ir/checks.py``."""
        if self.node is None:
            return InvalidValueError(what)
        return ir_checks.invalid(self.node, what)

    def _message(self, what: str) -> str:
        return what if self.node is None else f"{ir_checks.where(self.node)}: {what}"

    def _scalar_args(self, args):
        """``(args as int64 PrimExprs, the symbolic vars they use)``: the check kernel takes the
        vars and rebuilds the expressions (``batch*seq``) itself, so the VM passes plain shape
        values and computes nothing."""
        tirx = self.tirx
        static, free = [], []
        for a in args:
            if isinstance(a, (int, np.integer)):
                static.append(tirx.IntImm("int64", int(a)))
                continue
            e = a if str(a.ty) == "int64" else tirx.Cast("int64", a)
            static.append(e)
            for v in tirx.analysis.undefined_vars(e):
                if not any(v.same_as(f) for f in free):
                    free.append(v)
        return static, free

    def check_each(self, x, ok, what: str, args=()):
        """``x`` (a Relax tensor), ordered after a check that ``ok(element, position, *args)``
        holds for each of its elements; raises ``what`` (naming the node) at run time."""
        if isinstance(x, type(self.relax.const(0))):
            raise LoweringError(f"{self._message(what)}: a constant is checked when the module is built, not at run time")
        return self._check(x, ok, what, args, each=True)

    def check_once(self, x, ok, what: str, args=()):
        """``x``, ordered after a check that ``ok(*args)`` holds (facts about dims and shape
        values known only at run time). Decided now when the analyzer can prove it either way."""
        from .checks import as_bool

        static, _ = self._scalar_args(args)
        verdict = self.analyzer.simplify(as_bool(self.tirx, ok(*static)))
        value = bool(verdict.value) if isinstance(verdict, self.tirx.IntImm) else None
        if value is True:
            return x
        if value is False:
            raise self.invalid(what)
        return self._check(x, ok, what, args, each=False)

    def _check(self, x, ok, what, args, *, each: bool):
        from . import checks

        if not self.checked:
            return x
        tirx, relax = self.tirx, self.relax
        t = self.ty(x)
        if not isinstance(t, relax.TensorType) or t.ndim < 0:
            raise LoweringError(f"{self._message(what)}: a check needs a tensor of known rank")
        shape = self.shape(x)
        dims = [d if isinstance(d, int) else None for d in shape] if shape is not None else [None] * t.ndim
        static, passed = self._scalar_args(args)

        def bound(*xs):
            # ok() sees the args rebuilt from the kernel's parameters (one per symbolic var)
            from tvm.sym import Analyzer

            lead, params = (xs[:2], xs[2:]) if each else ((), xs)
            sub = Analyzer()
            for var, param in zip(passed, params):
                sub.bind(var, param)
            return ok(*lead, *[e if isinstance(e, tirx.IntImm) else sub.simplify(e) for e in static])

        message = self._message(what)
        func = checks.check_func(dims, str(t.dtype), message, bound, len(passed), each)
        gv = self.bb.add_func(func, checks.func_name(self.node.name if self.node else None, what))
        call_args = [x] + [relax.prim_value(p) for p in passed]
        out = relax.TensorType(t.shape, t.dtype) if t.shape is not None else relax.TensorType(dtype=t.dtype, ndim=t.ndim)
        self.checks.append(message)
        return self.emit(relax.op.call_tir_inplace(gv, relax.Tuple(call_args), [0], out))

    def index_proven(self, v: Value | None, extent) -> bool:
        """Whether every value of ``v`` provably lies in ``[-extent, extent)`` (``int_range``;
        symbolic extents are >= 1)."""
        r = self.int_range(v)
        if r is None:
            return False
        if isinstance(extent, int):
            return -extent <= r[0] and r[1] < extent
        return 0 <= r[0] and r[1] < 1

    def check_index(self, x, v: Value | None, extent, axis: int, dim=None, *, wrap: bool = False):
        """Indices ``x`` (IR value ``v``, None if not from the graph) into an axis of ``extent``
        (int or PrimExpr; ``dim`` the IR dim named in the message), checked in
        ``[-extent, extent)``: constants now (or once, against a symbolic extent), provably
        in-range values never, the rest element by element at run time. Returns the checked
        indices; ``wrap=True`` returns them with negative ones counted from the end (wrapped
        first and checked in ``[0, extent)``, the same condition: the wrap then fuses with
        whatever computed the indices, and the checked tensor is the one the kernel reads)."""
        what = ir_checks.index_out_of_range(dim if dim is not None else extent, axis)
        r = self.int_range(v)
        if wrap and not (r is not None and r[0] >= 0):
            x = self.emit(self.R.where(self.R.less(x, self.scalar(0, self.dtype(x))),
                                       self.R.add(x, self._extent_scalar(extent, self.dtype(x))), x))
        if self.index_proven(v, extent):
            return x
        if v is not None and v.const is not None:
            c = np.asarray(v.const)
            if c.size == 0:
                return x
            lo, hi = int(c.min()), int(c.max())
            return self.check_once(x, lambda n: (n >= -lo) & (n > hi), what, [extent])
        if wrap:
            return self.check_each(x, lambda e, pos, n: (e >= 0) & (e < n), what, [extent])
        return self.check_each(x, lambda e, pos, n: (e >= -n) & (e < n), what, [extent])

    def _extent_scalar(self, extent, dtype: str):
        """A dim (int or PrimExpr) as a 0-d tensor of ``dtype``."""
        if isinstance(extent, int):
            return self.scalar(extent, dtype)
        R = self.R
        t = self.emit(R.shape_to_tensor(self.relax.ShapeExpr([extent])))
        return self.emit(R.astype(R.reshape(t, []), dtype))

    _SAME_VALUES = frozenset({"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose", "Expand",
                              "Slice", "Tile", "Gather", "GatherElements", "GatherND", "Max", "Min"})

    def int_range(self, v: Value | None, depth: int = 0) -> tuple[int, int] | None:
        """``(lo, hi)`` bounding every value of the integer tensor ``v`` when the IR proves it
        (a constant, or data movement of constants: position ids sliced from a buffer), else
        None. Lets checks skip indices that cannot be out of range."""
        if v is None or not (v.dtype.is_int or v.dtype is DType.BOOL):
            return None
        key = id(v)
        if key in self._ranges:
            return self._ranges[key]
        r = None
        if v.const is not None:
            c = np.asarray(v.const)
            r = (int(c.min()), int(c.max())) if c.size else None
        elif v.producer is not None and depth < 32:
            n = v.producer
            if n.op in self._SAME_VALUES and n.inputs and n.outputs[0] is v:
                srcs = n.inputs if n.op in ("Max", "Min") else n.inputs[:1]
                rs = [self.int_range(s, depth + 1) for s in srcs]
                if rs and all(x is not None for x in rs):
                    r = (min(x[0] for x in rs), max(x[1] for x in rs))
            elif n.op == "Concat":
                rs = [self.int_range(s, depth + 1) for s in n.inputs]
                if rs and all(x is not None for x in rs):
                    r = (min(x[0] for x in rs), max(x[1] for x in rs))
            elif n.op == "Cast" and n.inputs[0] is not None:
                src = self.int_range(n.inputs[0], depth + 1)
                if src is not None and v.dtype.is_int:
                    info = np.iinfo(v.dtype.numpy)
                    r = src if info.min <= src[0] and src[1] <= info.max else None
        self._ranges[key] = r
        return r

    def check_input_dims(self, v: Value):
        """The graph input ``v``, checked for dims not fixed at compile time being >= 1 (each
        symbolic dim on the first input that binds it): zero-size inputs are refused, as
        ``ir.signature.check_inputs`` refuses them for both backends."""
        x = self[v]
        shape = self.shape(x) or []
        names = [d for d in v.shape or () if isinstance(d, str) and d.isidentifier()]
        new = [d for d in shape if isinstance(d, self.tirx.Var) and d.name not in self._dims_checked]
        if not new:
            return x
        self._dims_checked.update(d.name for d in new)
        what = (f"input {v.name!r}: {', '.join(d.name if d.name in names else '?' for d in new)} must be >= 1 "
                f"(zero-size inputs are not supported)")
        return self._check(x, lambda *ds: functools.reduce(lambda a, b: a & b, [d >= 1 for d in ds]), what, new,
                           each=False)

    def enforce_assumptions(self, x):
        """``x``, checked for every assumption the current node made (``assume``)."""
        pending, self._unenforced = self._unenforced, []
        for a in pending:
            what = f"the module was compiled for {a.describe()}"
            lhs = self.dim(a.lhs)
            if lhs is None:
                raise LoweringError(f"{self._message(what)}: an assumption on an unknown dim")
            fn = {"<=": lambda d, r=a.rhs: d <= r, ">=": lambda d, r=a.rhs: d >= r, "==": lambda d, r=a.rhs: d == r}[a.op]
            x = self.check_once(x, fn, what, [lhs])
        return x

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


    # -- nodes and subgraphs --------------------------------------------------------------------
    def lower_node(self, node: Node) -> None:
        """Lower one node with its registered lowering; its outputs get their Relax values."""
        from . import lowering as registry

        relax = self.relax
        self.node = node
        fn = registry.get_lowering(node.op)
        if fn is None:
            raise UnsupportedOpError(f"cannot compile op {node.op!r} (node {node.name}): no lowering to TVM yet")
        args = [None if v is None else self[v] for v in node.inputs]
        self._unenforced = []
        try:
            result = fn(self, node, *args)
        except (UnsupportedOpError, LoweringError, InvalidValueError):
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
        if self._unenforced and self.checked:
            raise LoweringError(f"lowering of node {node.name} ({node.op}) assumed "
                                f"{self._unenforced[0].describe()} without enforce_assumptions()")
        for out, r in zip(node.outputs, result):
            if not isinstance(r, (relax.Var, type(relax.const(0.0)))):
                r = self.emit(r)
            self.values[id(out)] = self.reconcile(r, out)

    def lower_subgraph(self, body: Graph, args) -> list:
        """Lower a subgraph (an If branch, one iteration of a Loop/Scan body) inline, into the
        current block: ``args`` are the Relax values of its inputs (formal inputs, then
        captures); returns the Relax values of its outputs. Callable again for the next
        iteration (its values are rebound each time)."""
        if len(args) != len(body.inputs):
            raise LoweringError(f"subgraph {body.name}: {len(args)} arguments for {len(body.inputs)} inputs")
        outer = self.node
        for v, a in zip(body.inputs, args):
            self.values[id(v)] = self.reconcile(a, v)
        for v in body.constants.values():
            self.values[id(v)] = self.relax.const(np.array(to_storage(v.const, v.dtype), order="C", copy=None),
                                                  TVM_DTYPE[v.dtype])
        for node in body.nodes:
            self.lower_node(node)
        self.node = outer
        return [self[v] for v in body.outputs]

    def branch(self, body: Graph, args):
        """A subgraph as a Relax ``SeqExpr`` of its own (a branch of ``relax.If``)."""
        if self.dataflow:
            raise LoweringError("a relax.If branch inside a dataflow block (lower() should have seen it)")
        self.bb._begin_binding_block()
        outs = self.lower_subgraph(body, args)
        result = outs[0] if len(outs) == 1 else self.relax.Tuple(outs)
        block = self.bb._end_block()
        return self.relax.SeqExpr([block], result)


def _as_expr(tirx, d):
    return tirx.IntImm("int64", d) if isinstance(d, int) else d


# -----------------------------------------------------------------------------------------------
def lower(graph: Graph, target=None, *, checked: bool = True, builder=None, name: str = "main",
          constants: dict | None = None) -> Lowered:
    """Lower ``graph`` to a Relax IRModule (see the module docstring); ``checked=False`` leaves
    the run-time checks out. With ``builder`` (a ``relax.BlockBuilder``) the graph becomes the
    function ``name`` of the builder's module (kernels shared with functions already there are
    not duplicated) and ``Lowered.mod`` is ``None``: the caller takes the module when every
    function is in (``finish_module``). Functions lowered with the same ``constants`` dict share
    one Relax constant per distinct weight (equal contents), so the library stores it once."""
    from ..ir.subgraph import walk
    from ..ir.unroll import expand_control_flow, has_control_flow
    from . import lowering as registry

    if has_control_flow(graph):
        # If with a known condition, Loop and Scan become straight-line IR first (ir/unroll.py),
        # so what a body computes from the iteration number folds to constants.
        graph = graph.clone()
        expand_control_flow(graph, strict=True)
    ctx = LowerContext(graph, target, checked, builder)
    relax = ctx.relax
    bb = ctx.bb
    # Find every op first: an unsupported op is reported before any work (and names the node).
    branches = False
    for g in walk(graph):
        for node in g.nodes:
            if registry.get_lowering(node.op) is None:
                raise UnsupportedOpError(f"cannot compile op {node.op!r} (node {node.name}): no lowering to TVM yet")
            why = check_storage(node)
            if why is not None:
                raise UnsupportedOpError(f"cannot compile {why} (node {node.name})")
            branches = branches or registry.needs_binding_blocks(node)
    params = []
    for v in graph.inputs:
        if v.shape is None:
            raise UnsupportedOpError(f"cannot compile input {v.name!r}: its rank is unknown")
        shape = [ctx.dim(d, fresh_for_unknown=True) for d in v.shape]
        p = relax.Var(v.name, relax.TensorType(shape, TVM_DTYPE[v.dtype]))
        params.append(p)
        ctx.values[id(v)] = p
    for v in graph.constants.values():
        ctx.values[id(v)] = _constant(relax, v, constants)

    with bb.function(name, params):
        if branches:
            # A run-time branch (relax.If) cannot sit in a dataflow block: lower into plain
            # binding blocks, and let ConvertToDataflow regroup the straight-line parts.
            ctx.dataflow = False
            for v in graph.inputs:
                ctx.values[id(v)] = ctx.check_input_dims(v)
            for node in graph.nodes:
                ctx.lower_node(node)
            ctx.node = None
            gv = bb.emit(relax.Tuple([ctx[v] for v in graph.outputs]))
        else:
            with bb.dataflow():
                for v in graph.inputs:
                    ctx.values[id(v)] = ctx.check_input_dims(v)
                for node in graph.nodes:
                    ctx.lower_node(node)
                ctx.node = None
                gv = bb.emit_output(relax.Tuple([ctx[v] for v in graph.outputs]))
        bb.emit_func_output(gv)
    lowered = Lowered(None, ctx.assumptions, ctx.match_casts, ctx.checks, branches)
    if builder is None:
        lowered.mod = finish_module(bb, [lowered])
    return lowered


def _constant(relax, v: Value, shared: dict | None):
    """The Relax constant of ``v``; from ``shared`` (keyed by dtype, shape and a digest of the
    bytes) when another function of the module already has the same array."""
    array = np.array(to_storage(v.const, v.dtype), order="C", copy=None)
    if shared is None:
        return relax.const(array, TVM_DTYPE[v.dtype])
    import hashlib

    key = (v.dtype, array.shape, hashlib.blake2b(array.reshape(-1).view(np.uint8), digest_size=16).digest())
    c = shared.get(key)
    if c is None:
        c = shared[key] = relax.const(array, TVM_DTYPE[v.dtype])
    return c


def finish_module(bb, lowered: list[Lowered]):
    """The builder's module; when a function has a run-time branch (lowered into plain binding
    blocks), its straight-line runs regrouped into dataflow blocks."""
    from tvm import relax

    mod = bb.get()
    return relax.transform.ConvertToDataflow()(mod) if any(lw.branches for lw in lowered) else mod


def lower_to_relax(graph: Graph, target=None):
    """The Relax ``IRModule`` of ``graph`` (``main`` takes the graph inputs, returns a tuple of
    the outputs in graph-output order). Raises ``UnsupportedOpError`` naming the op and node for
    anything the compiler cannot lower."""
    return lower(graph, target).mod
