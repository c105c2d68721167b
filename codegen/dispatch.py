"""Shape-bucket dispatch: one artifact, a static specialization per tuned bucket plus the
general function for every other size.

Kernel tuning measures static shapes. A tuned artifact therefore holds the graph lowered twice
or more: ``main_any`` (symbolic dims, optc's default schedules) and one ``main_<bucket>`` per
bucket the tuning database kept tuned kernels for (the graph with its dims bound,
``ir/specialize.py``: every kernel static, so the tuned schedules apply). ``main`` compares the
inputs' sizes with each bucket and calls the specialization that matches, else ``main_any``::

    def main(input_ids: (batch, seq), ...):
        if batch == 1 and seq == 128:
            r = main_batch_1_seq_128(match_cast(input_ids, (1, 128)), ...)
        else:
            r = main_any(input_ids, ...)
        return r

Each function keeps its own dataflow blocks and memory plan; the branch costs one comparison
per call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from tvm import relax, tirx

__all__ = ["bucket_function_name", "emit_dispatch"]


def bucket_function_name(sizes: Mapping[str, int]) -> str:
    text = "_".join(f"{k}_{v}" for k, v in sorted(sizes.items()))
    return "main_" + re.sub(r"\W", "_", text)


def _fresh_params(func: relax.Function) -> tuple[list[relax.Var], dict[str, tirx.Var]]:
    """Parameters shaped like ``func``'s, with their own symbolic vars (by name)."""
    dims: dict[str, tirx.Var] = {}
    params = []
    for p in func.params:
        ty = p.ty
        shape = []
        for d in ty.shape.values:
            if isinstance(d, tirx.Var):
                d = dims.setdefault(d.name, tirx.Var(d.name, "int64"))  # Relax shape vars are int64
            shape.append(d)
        params.append(relax.Var(p.name, relax.TensorType(shape, ty.dtype)))
    return params, dims


def emit_dispatch(bb: relax.BlockBuilder, general: str, buckets: list[tuple[Mapping[str, int], str]]) -> None:
    """Add ``main`` to ``bb``'s module: call the function named for the first bucket whose sizes
    the inputs have, else ``general``. ``buckets``: (sizes by dim name, function name)."""
    mod = bb.get()
    general_gv = mod.get_global_var(general)
    params, dims = _fresh_params(mod[general_gv])

    def branch(gv, args, casts=()):
        call = bb.normalize(relax.Call(gv, args))
        out = relax.Var("out", call.ty)
        return relax.SeqExpr([relax.BindingBlock([*casts, relax.VarBinding(out, call)])], out)

    with bb.function("main", params):
        general_call = bb.normalize(relax.Call(general_gv, params))
        body = branch(general_gv, params)
        for sizes, name in reversed(buckets):
            gv = mod.get_global_var(name)
            casts, args = [], []
            for p, q in zip(params, mod[gv].params):
                v = relax.Var(p.name + "_static", q.ty)
                casts.append(relax.MatchCast(v, p, q.ty))
                args.append(v)
            cond = tirx.all(*[dims[k] == tirx.const(int(v), "int64") for k, v in sorted(sizes.items())])
            body = relax.SeqExpr([], relax.If(relax.prim_value(cond), branch(gv, args, casts), body))
        result = bb.emit(body.body)
        # the branches' common type forgets the shapes: restate them (checked at run time)
        bb.emit_func_output(bb.match_cast(result, general_call.ty))
