"""``onnx.backend`` implementations, so the ONNX conformance suite can drive optc.

``ReferenceBackend`` imports the model into the IR and runs it through the reference
interpreter; the compiled backend of the codegen layer reuses the same shape.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .ir import Graph


class ReferenceRep(BackendRep):
    """A prepared model: the imported IR graph, run by the interpreter."""

    def __init__(self, graph: Graph):
        from .ir.interpreter import Interpreter

        self.graph = graph
        self.interpreter = Interpreter(graph)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        names = self.graph.input_names()
        if isinstance(inputs, dict):
            feed = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feed = dict(zip(names, inputs))
        out = self.interpreter.run(feed)
        return tuple(out[name] for name in self.graph.output_names())


class ReferenceBackend(Backend):
    """Runs ONNX models through optc's ONNX frontend and reference interpreter."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> ReferenceRep:
        from .frontend.onnx_import import import_onnx

        super().prepare(model, device, **kwargs)
        return ReferenceRep(import_onnx(model))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Sequence[np.ndarray], device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
