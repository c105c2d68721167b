"""Op schemas: what inputs, outputs and typed attributes an op takes, and its type inference.

Every op the IR knows is registered here once (by the modules of ``ir/ops``). The graph calls
``infer`` whenever a node is created, and the verifier calls it again to check that stored types
still hold. ``sym`` optionally propagates *symbolic values* through shape computations (``Shape``
→ ``Gather`` → ``Concat`` → ``Reshape``), which is what lets the frontends fold exporters' shape
chains even when batch and sequence are symbolic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from .errors import IRError
from .types import DType, TensorType

if TYPE_CHECKING:
    from .graph import Value


class AttrKind(enum.Enum):
    INT = "int"
    FLOAT = "float"
    STRING = "str"
    INTS = "ints"
    FLOATS = "floats"
    STRINGS = "strs"
    TENSOR = "tensor"
    DTYPE = "dtype"
    GRAPH = "graph"  # a subgraph (If branches, Loop/Scan bodies): an IR ``Graph``, see ir/subgraph.py


REQUIRED = object()


@dataclass(frozen=True)
class AttrSpec:
    kind: AttrKind
    default: Any = REQUIRED
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


def coerce_attr(kind: AttrKind, value: Any) -> Any:
    """Normalize an attribute value to its canonical Python form, or raise TypeError."""
    if kind is AttrKind.INT:
        if isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, (int, np.integer)):
            return int(value)
    elif kind is AttrKind.FLOAT:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            return float(value)
    elif kind is AttrKind.STRING:
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, str):
            return value
    elif kind is AttrKind.INTS:
        if isinstance(value, (list, tuple, np.ndarray)):
            return tuple(int(v) for v in value)
    elif kind is AttrKind.FLOATS:
        if isinstance(value, (list, tuple, np.ndarray)):
            return tuple(float(v) for v in value)
    elif kind is AttrKind.STRINGS:
        if isinstance(value, (list, tuple)):
            return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in value)
    elif kind is AttrKind.TENSOR:
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, (int, float, bool, np.generic)):
            return np.asarray(value)
    elif kind is AttrKind.DTYPE:
        if isinstance(value, DType):
            return value
        if isinstance(value, str):
            return DType.parse(value)
    elif kind is AttrKind.GRAPH:
        from .graph import Graph

        if isinstance(value, Graph):
            return value
    raise TypeError(f"expected {kind.value}, got {type(value).__name__} {value!r}")


@dataclass
class OpSchema:
    """One op. ``inputs``/``outputs`` are names; a trailing ``?`` marks an optional slot and a
    trailing ``*`` a variadic last slot."""

    name: str
    inputs: Sequence[str]
    outputs: Sequence[str]
    infer: Callable[["InferContext"], list[TensorType]]
    attrs: dict[str, AttrSpec] = field(default_factory=dict)
    sym: Callable[["InferContext"], list[tuple | None]] | None = None
    doc: str = ""

    @property
    def min_inputs(self) -> int:
        n = 0
        for i, name in enumerate(self.inputs):
            if not name.endswith(("?", "*")):
                n = i + 1
        return n

    @property
    def max_inputs(self) -> float:
        if self.inputs and self.inputs[-1].endswith("*"):
            return float("inf")
        return len(self.inputs)

    @property
    def variadic_outputs(self) -> bool:
        return bool(self.outputs) and self.outputs[-1].endswith("*")

    def output_count_ok(self, n: int) -> bool:
        required = sum(1 for o in self.outputs if not o.endswith(("?", "*")))
        if self.variadic_outputs:
            return n >= required
        return required <= n <= len(self.outputs)

    def resolve_attrs(self, attrs: dict[str, Any], where: str) -> dict[str, Any]:
        """Typed attributes with defaults filled in; unknown or ill-typed ones are errors."""
        out: dict[str, Any] = {}
        for key, value in attrs.items():
            spec = self.attrs.get(key)
            if spec is None:
                raise IRError(f"{where}: {self.name} has no attribute {key!r}")
            if value is None and spec.default is None:
                out[key] = None  # explicitly absent; lets resolved attrs be resolved again
                continue
            try:
                out[key] = coerce_attr(spec.kind, value)
            except TypeError as e:
                raise IRError(f"{where}: attribute {key!r} of {self.name}: {e}") from None
        for key, spec in self.attrs.items():
            if key not in out:
                if spec.required:
                    raise IRError(f"{where}: {self.name} needs attribute {key!r}")
                out[key] = spec.default
        return out


_REGISTRY: dict[str, OpSchema] = {}


def register(schema: OpSchema) -> OpSchema:
    if schema.name in _REGISTRY:
        raise ValueError(f"op {schema.name} registered twice")
    _REGISTRY[schema.name] = schema
    return schema


def unregister(name: str) -> None:
    """Remove an op (for plugins and tests that register temporary ops)."""
    _REGISTRY.pop(name, None)


def get_schema(op: str) -> OpSchema | None:
    _ensure_loaded()
    return _REGISTRY.get(op)


def all_schemas() -> dict[str, OpSchema]:
    _ensure_loaded()
    return dict(_REGISTRY)


def _ensure_loaded() -> None:
    from . import ops  # noqa: F401  (registers every op family)


class InferContext:
    """What type inference sees of a node: its input values, resolved attributes and the
    number of outputs."""

    def __init__(self, op: str, inputs: Sequence["Value | None"], attrs: dict[str, Any], num_outputs: int):
        self.op = op
        self.inputs = list(inputs)
        self.attrs = attrs
        self.num_outputs = num_outputs

    def __len__(self) -> int:
        return len(self.inputs)

    def has(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def type(self, i: int) -> TensorType:
        v = self.inputs[i]
        if v is None:
            raise IRError(f"{self.op}: input {i} is required")
        return v.type

    def dtype(self, i: int) -> DType:
        return self.type(i).dtype

    def shape(self, i: int):
        return self.type(i).shape

    def const(self, i: int) -> np.ndarray | None:
        if not self.has(i):
            return None
        return self.inputs[i].const

    def sym(self, i: int) -> tuple | None:
        """The input's symbolic value (a tuple of dims) if it is a known small int tensor."""
        if not self.has(i):
            return None
        return self.inputs[i].sym

    def attr(self, name: str) -> Any:
        return self.attrs[name]

    def fail(self, msg: str) -> IRError:
        return IRError(f"{self.op}: {msg}")
