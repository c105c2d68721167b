"""optc's intermediate representation: typed SSA graphs, op schemas, the verifier, the text form
and the reference interpreter (``optc.ir.interpreter``, imported on demand since it needs torch)."""

from .errors import IRError, ModelFileError, OptcError, UnsupportedOpError
from .graph import Graph, Node, Value
from .schema import AttrKind, OpSchema, all_schemas, get_schema
from .types import DType, TensorType

__all__ = [
    "AttrKind", "DType", "Graph", "IRError", "ModelFileError", "Node", "OptcError", "OpSchema", "TensorType", "UnsupportedOpError",
    "Value", "all_schemas", "get_schema",
]
