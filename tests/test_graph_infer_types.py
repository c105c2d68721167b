"""Graph.infer_types: re-inference after a constant changes shape (what compression passes do)."""

import numpy as np
import pytest

from optc.ir import Graph
from optc.ir.errors import IRError
from optc.ir.types import DType, TensorType


def _graph():
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.FLOAT32, ("batch", 6)))
    w = g.add_constant(np.ones((6, 4), np.float32), "w")
    h = g.op("MatMul", x, w)
    shape = g.add_constant(np.array([0, 2, 2], np.int64), "shape")
    y = g.op("Reshape", h, shape)
    g.set_outputs([y])
    return g, w, shape, y


def test_infer_types_follows_a_smaller_weight():
    g, w, shape, y = _graph()
    assert y.shape == ("batch", 2, 2)
    w.const = np.ones((6, 2), np.float32)
    w.type = TensorType.of(w.const)
    shape.const = np.array([0, 1, 2], np.int64)
    shape.type = TensorType.of(shape.const)
    g.infer_types()
    assert y.shape == ("batch", 1, 2)


def test_infer_types_rejects_an_inconsistent_edit():
    g, w, shape, y = _graph()
    w.const = np.ones((5, 4), np.float32)
    w.type = TensorType.of(w.const)
    with pytest.raises(IRError, match="MatMul"):
        g.infer_types()
