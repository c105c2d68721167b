"""Names the user sees in the imported graph: symbolic dims named after the user's
``torch.export.Dim`` (recovered from the shape environment, or from the ``dynamic_shapes`` given
to ``export_module``), and graph outputs named after the keys of the output pytree
(``last_hidden_state``; ``output`` / ``output_0..`` for plain tensors and tuples)."""

from __future__ import annotations

import re

import sympy
import torch


def sanitize(name: str) -> str:
    """``name`` with the characters IR value names do not allow replaced by ``_``."""
    name = re.sub(r"[^A-Za-z0-9_.\-:/]", "_", name)
    return name or "output"


# -- symbolic dims ---------------------------------------------------------------------------
def _shape_env(ep):
    for node in ep.graph.nodes:
        v = node.meta.get("val")
        if isinstance(v, torch.Tensor) and getattr(v, "fake_mode", None) is not None:
            return v.fake_mode.shape_env
    return None


def recover_dim_names(ep) -> dict[str, str]:
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


def names_from_spec(ep, dyn) -> dict[str, str]:
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


# -- outputs ---------------------------------------------------------------------------------
def output_names(ep) -> list[str]:
    """One name per user output, from the output pytree; positional names when the pytree is
    exotic or its keys are not unique."""
    n_user = sum(1 for s in ep.graph_signature.output_specs if s.kind.name == "USER_OUTPUT")
    try:
        names = _leaf_names(ep.call_spec.out_spec)
    except Exception:  # noqa: BLE001 - exotic pytree: fall back to positions
        names = []
    if len(names) != n_user or len(set(names)) != len(names):
        names = ["output"] if n_user == 1 else [f"output_{i}" for i in range(n_user)]
    return [sanitize(n) for n in names]


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
