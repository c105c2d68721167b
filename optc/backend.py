"""``onnx.backend`` implementations, so the ONNX conformance suite can drive optc.

``ReferenceBackend`` imports the model into the IR and runs it through the reference
interpreter; ``CompiledBackend`` compiles the imported graph with TVM for the host x86 CPU and
runs the built module.
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
        out = self.interpreter.run(_feed(self.graph.input_names(), inputs))
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


def _feed(names: list[str], inputs: Any) -> dict:
    if isinstance(inputs, dict):
        return dict(inputs)
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    return dict(zip(names, inputs))


class CompiledRep(BackendRep):
    """A prepared model: the imported IR graph, compiled for the host (``codegen.build``)."""

    def __init__(self, graph: Graph, target: str = "x86"):
        from .codegen.build import build

        self.graph = graph
        self.compiled = build(graph, target)
        self.model = self.compiled.load()

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        out = self.model.run(_feed(self.graph.input_names(), inputs))
        return tuple(out[name] for name in self.graph.output_names())


class CompiledBackend(Backend):
    """Runs ONNX models through optc's ONNX frontend, compiled by TVM for the host x86 CPU."""

    target = "x86"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> CompiledRep:
        from .frontend.onnx_import import import_onnx

        super().prepare(model, device, **kwargs)
        return CompiledRep(import_onnx(model), cls.target)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Sequence[np.ndarray], device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"
