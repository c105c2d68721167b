"""Seeded mutators for the fuzz suite (tests/test_fuzz.py): each takes a valid input (bytes, an
ONNX model, a JSON document, IR text) and a ``random.Random`` and returns a damaged copy plus a
description of the damage, so a failing case can be named and replayed.

``OPTC_FUZZ_SCALE`` (default 1) multiplies the number of cases; CI runs the default.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
from typing import Any, Callable

import onnx

SCALE = float(os.environ.get("OPTC_FUZZ_SCALE", "1"))


def cases(n: int) -> int:
    return max(1, int(n * SCALE))


# Values that break assumptions: boundaries, signs, huge, wrong types.
INTS = [0, 1, -1, 2, 3, -2, 7, 255, 256, -129, 2**31 - 1, -2**31, 2**31, 2**63 - 1, -2**63, 10**12, -10**12]
ODD = [None, "", "x", "../x", "/etc/passwd", [], {}, [1, "a"], {"a": 1}, True, 1.5, -0.0, 1e308, "NaN"]


def flip_bytes(data: bytes, rng: random.Random, max_flips: int = 8) -> tuple[bytes, str]:
    b = bytearray(data)
    n = rng.randint(1, max_flips)
    spots = [rng.randrange(len(b)) for _ in range(n)]
    for i in spots:
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b), f"flipped bits at {sorted(spots)[:8]}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    cut = rng.randrange(len(data))
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


def splice(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Duplicate or delete a random span."""
    i, j = sorted(rng.randrange(len(data) + 1) for _ in range(2))
    if rng.random() < 0.5:
        return data[:j] + data[i:], f"duplicated bytes {i}:{j}"
    return data[:i] + data[j:], f"deleted bytes {i}:{j}"


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    return rng.choice([flip_bytes, truncate, splice])(data, rng)


# -- ONNX: structured mutations of the protobuf ---------------------------------------------
_OPS = ["Add", "Gather", "Reshape", "Slice", "Concat", "MatMul", "Relu", "NoSuchOp", "Loop", "Expand", "Transpose",
        "Split", "Cast", "Softmax", "Resize", ""]


def _all_value_infos(g):
    return list(g.input) + list(g.output) + list(g.value_info)


def mutate_onnx(model: onnx.ModelProto, rng: random.Random) -> tuple[onnx.ModelProto, str]:
    m = copy.deepcopy(model)
    g = m.graph
    choice = rng.randrange(14)
    if choice == 0 and _all_value_infos(g):
        vi = rng.choice(_all_value_infos(g))
        dims = vi.type.tensor_type.shape.dim
        if dims:
            d = rng.choice(dims)
            v = rng.choice(INTS)
            d.dim_value = max(min(v, 2**63 - 1), -2**63)
            return m, f"value {vi.name}: dim -> {v}"
    if choice == 1 and _all_value_infos(g):
        vi = rng.choice(_all_value_infos(g))
        code = rng.choice([0, 8, 9, 17, 23, 25, 99, rng.randrange(30)])
        vi.type.tensor_type.elem_type = code
        return m, f"value {vi.name}: elem_type -> {code}"
    if choice == 2 and g.node:
        n = rng.choice(g.node)
        op = rng.choice(_OPS)
        n.op_type = op
        return m, f"node {n.name or n.output[0]}: op -> {op!r}"
    if choice == 3 and g.node:
        n = rng.choice(g.node)
        if n.input:
            i = rng.randrange(len(n.input))
            new = rng.choice(["", "undefined_value", n.output[0]] + [x.name for x in g.initializer])
            n.input[i] = new
            return m, f"node {n.name or n.output[0]}: input {i} -> {new!r}"
    if choice == 4 and g.node:
        n = rng.choice(g.node)
        attr = onnx.helper.make_attribute(rng.choice(["axis", "perm", "to", "alpha", "mode", "axes"]),
                                          rng.choice([rng.choice(INTS[:12]), [rng.randint(-5, 5)] * 3, "bogus", 1.5]))
        n.attribute.append(attr)
        return m, f"node {n.name or n.output[0]}: extra attribute {attr.name}"
    if choice == 5:
        v = rng.choice([0, 1, 7, 12, 13, 17, 99, -1, 2**31])
        m.opset_import[0].version = v
        return m, f"opset -> {v}"
    if choice == 6 and g.node:
        n = rng.choice(g.node)
        g.node.append(copy.deepcopy(n))
        return m, f"node {n.name or n.output[0]} duplicated (SSA violation)"
    if choice == 7 and len(g.node) > 1:
        nodes = list(g.node)
        rng.shuffle(nodes)
        del g.node[:]
        g.node.extend(nodes)
        return m, "nodes shuffled (not topologically sorted)"
    if choice == 8 and g.initializer:
        t = rng.choice(g.initializer)
        t.dims[:] = [rng.choice([1, 2, 3, 5, 0, 10**6]) for _ in range(rng.randint(0, 3))]
        return m, f"initializer {t.name}: dims -> {list(t.dims)}"
    if choice == 9 and g.initializer:
        t = rng.choice(g.initializer)
        raw = bytearray(t.raw_data)
        cut = rng.randrange(len(raw) + 1)
        t.raw_data = bytes(raw[:cut])
        return m, f"initializer {t.name}: raw data cut to {cut} bytes"
    if choice == 10 and g.output:
        o = rng.choice(g.output)
        o.name = rng.choice(["nowhere", g.input[0].name if g.input else "x", ""])
        return m, f"output renamed to {o.name!r}"
    if choice == 11 and g.node:
        n = rng.choice(g.node)
        if n.output:
            n.output[0] = rng.choice(g.input).name if g.input else "y"
            return m, f"node {n.name}: output -> {n.output[0]} (redefines an input)"
    if choice == 12 and g.initializer:
        t = rng.choice(g.initializer)
        t.data_location = onnx.TensorProto.EXTERNAL
        t.external_data.add(key="location", value=rng.choice(["missing.bin", "../../etc/passwd", "/etc/passwd"]))
        t.external_data.add(key="offset", value=rng.choice(["0", "-1", "abc", "99999999999"]))
        return m, f"initializer {t.name}: external data {t.external_data[0].value}"
    del g.input[:]
    return m, "all graph inputs removed"


# -- JSON documents (manifests, pt2 configs) ---------------------------------------------------
def _paths(doc: Any, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def mutate_json(doc: Any, rng: random.Random) -> tuple[Any, str]:
    doc = copy.deepcopy(doc)
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return rng.choice(ODD), "document replaced"
    path = rng.choice(paths)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1]
    op = rng.randrange(3)
    if op == 0 and isinstance(parent, dict):
        del parent[key]
        return doc, f"removed {'/'.join(map(str, path))}"
    new = rng.choice(ODD + INTS)
    parent[key] = new
    return doc, f"{'/'.join(map(str, path))} -> {new!r}"


# -- text (IR files) ------------------------------------------------------------------------------
_TOKEN = re.compile(r"\s+|[A-Za-z_][A-Za-z0-9_.]*|-?\d+(?:\.\d+)?|.", re.S)


def mutate_text(text: str, rng: random.Random) -> tuple[str, str]:
    tokens = _TOKEN.findall(text)
    idx = [i for i, t in enumerate(tokens) if not t.isspace()]
    i = rng.choice(idx)
    op = rng.randrange(4)
    old = tokens[i]
    if op == 0:
        tokens[i] = ""
        what = f"deleted token {old!r}"
    elif op == 1:
        tokens[i] = old + old
        what = f"doubled token {old!r}"
    elif op == 2:
        new = str(rng.choice(INTS)) if re.fullmatch(r"-?\d+", old) else rng.choice(["f32", "i64", "bogus", "%x", "(", ")", "[", "]", "?", "-1", "1e999"])
        tokens[i] = new
        what = f"token {old!r} -> {new!r}"
    else:
        j = rng.choice(idx)
        tokens[i], tokens[j] = tokens[j], tokens[i]
        what = f"swapped tokens {old!r} and {tokens[i]!r}"
    return "".join(tokens), what


def mutate_with(mutators: list[Callable], value, rng: random.Random):
    return rng.choice(mutators)(value, rng)
