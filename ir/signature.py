"""The run-time signature of a graph or compiled module, without torch: checking the inputs a
caller gives against the declared ones, and evaluating symbolic dims. The reference interpreter
and the compiled runtime share it, so both accept and refuse exactly the same inputs (and
running an artifact never needs torch)."""

from __future__ import annotations

from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np

from .errors import InvalidValueError, IRError
from .symbolic import eval_dim  # noqa: F401  (re-exported: callers import it from here)
from .types import DType


def empty_input_shape(declared, shape: tuple, empty_ok: Collection[str]) -> tuple | None:
    """For an input empty along one of the ``empty_ok`` dims: its shape with the declared fixed
    dims (what the graph runs it as); None for any other input."""
    if not empty_ok or declared is None or len(declared) != len(shape):
        return None
    if not any(n == 0 and isinstance(d, str) and d in empty_ok for d, n in zip(declared, shape)):
        return None
    return tuple(d if isinstance(d, int) else n for d, n in zip(declared, shape))


def check_inputs(graph_inputs: Sequence[Any], given: Mapping[str, Any], kind: str,
                 dtype_of: Callable[[Any], DType | None], shape_of: Callable[[Any], tuple],
                 empty_ok: Collection[str] = ()) -> dict[str, int]:
    """Validate names, dtypes, ranks and dims of the given inputs; return the symbol bindings.

    ``graph_inputs`` are the declared inputs: graph input ``Value``s, or anything with the same
    ``name``, ``dtype``, ``shape`` and ``type`` (the compiled runtime passes its signature's
    ``TensorSpec``s), so the interpreter and compiled modules check inputs the same way.
    ``dtype_of``/``shape_of`` read a given array's IR element type (None if it has none) and
    shape. ``empty_ok`` names symbolic dims that may be 0 (a decoder's past length, which the
    reference interpreter runs empty; compiled modules never take an empty cache). An input
    that is empty along such a dim holds nothing, so its fixed dims are not checked (an empty
    cache has no heads to disagree about: a head-pruned decoder takes the original's empty
    cache; ``empty_input_shape`` gives the shape to run it with). Raises ``IRError`` naming the
    input."""
    names = [v.name for v in graph_inputs]
    missing = [n for n in names if n not in given]
    unexpected = sorted(set(given) - set(names))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing input(s) " + ", ".join(map(repr, missing)))
        if unexpected:
            parts.append("unexpected input(s) " + ", ".join(map(repr, unexpected)))
        raise IRError("; ".join(parts) + f" (the graph takes {', '.join(map(repr, names)) or 'no inputs'})")
    bindings: dict[str, int] = {}
    bound_by: dict[str, str] = {}
    composite: list[tuple[str, int, str, int]] = []
    for v in graph_inputs:
        x = given[v.name]
        dt = dtype_of(x)
        if dt is not v.dtype:
            got = "an unsupported element type" if dt is None else dt.value
            raise IRError(f"input {v.name!r}: expected element type {v.dtype.value}, got {got} ({kind})")
        shape = tuple(int(d) for d in shape_of(x))
        declared = v.shape
        if declared is None:
            continue
        if len(shape) != len(declared):
            raise IRError(f"input {v.name!r}: expected rank {len(declared)} {v.type}, got shape {list(shape)}")
        empty = empty_input_shape(declared, shape, empty_ok) is not None
        for axis, (d, n) in enumerate(zip(declared, shape)):
            if n == 0 and not isinstance(d, int) and d not in empty_ok:
                # ir/checks.py: both backends refuse zero-size values of dims not fixed at compile
                # time (compiled kernels index with them; checked modules refuse them too).
                raise InvalidValueError(f"input {v.name!r}: dim {axis} ({'?' if d is None else d}) is 0; a dim not "
                                        f"fixed at compile time must be >= 1 (zero-size inputs are not supported)")
            if d is None:
                continue
            if isinstance(d, int):
                if d != n and not empty:
                    raise IRError(f"input {v.name!r}: dim {axis} must be {d} ({v.type}), got shape {list(shape)}")
            elif d.isidentifier():
                if d in bindings and bindings[d] != n:
                    raise IRError(f"input {v.name!r}: dim {axis} is {d!r}={n}, but {bound_by[d]} bound {d!r}={bindings[d]}")
                bindings.setdefault(d, n)
                bound_by.setdefault(d, f"input {v.name!r}")
            else:
                composite.append((v.name, axis, d, n))
    for name, axis, d, n in composite:
        want = eval_dim(d, bindings)
        if want is not None and want != n:
            raise IRError(f"input {name!r}: dim {axis} is {d!r}={want} by the other inputs, got {n}")
    return bindings


def numpy_dtype(x: Any) -> DType | None:
    """The IR element type of a numpy-like array, or None."""
    try:
        return DType.from_numpy(np.asarray(x).dtype)
    except TypeError:
        return None


GENERATED_INPUT_LIMIT = 1 << 30
"""Bytes optc will allocate for inputs it generates itself (random inputs for ``--check-numerics``,
``optc bench`` without ``--inputs``): a model declaring a [100000, 100000] input must get an
error, not an out-of-memory kill."""


def check_generated_size(name: str, shape, dtype: DType, what: str) -> None:
    """Refuse to generate an input of ``shape`` when it exceeds ``GENERATED_INPUT_LIMIT``."""
    from .errors import ResourceError

    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * dtype.itemsize
    if nbytes > GENERATED_INPUT_LIMIT:
        raise ResourceError(f"input {name!r} of shape {list(shape)} would take {nbytes:,} bytes for {what} "
                            f"(limit {GENERATED_INPUT_LIMIT:,}): give smaller dims or your own inputs")
