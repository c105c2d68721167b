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


class _CpuBackend(Backend):
    """What both backends share: CPU only, and run_model = prepare + run."""

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Sequence[np.ndarray], device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


class ReferenceRep(BackendRep):
    """A prepared model: the imported IR graph, run by the interpreter."""

    def __init__(self, graph: Graph):
        from .ir.interpreter import Interpreter

        self.graph = graph
        self.interpreter = Interpreter(graph)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        out = self.interpreter.run(_feed(self.graph.input_names(), inputs))
        return tuple(out[name] for name in self.graph.output_names())


class ReferenceBackend(_CpuBackend):
    """Runs ONNX models through optc's ONNX frontend and reference interpreter."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> ReferenceRep:
        from .frontend.onnx_import import import_onnx

        super().prepare(model, device, **kwargs)
        return ReferenceRep(import_onnx(model))


def _feed(names: list[str], inputs: Any) -> dict:
    if isinstance(inputs, dict):
        return dict(inputs)
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    return dict(zip(names, inputs))


# Input slots that carry shape operands (what the compiler must know when it generates code).
_OPERAND_SLOTS = {
    "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Pad": {1, 2, 3}, "Slice": {1, 2, 3, 4}, "Squeeze": {1},
    "Unsqueeze": {1}, "CumSum": {1}, "TopK": {1}, "Split": {1}, "OneHot": {1}, "Range": {0, 1, 2},
    "Trilu": {1}, "ConstantOfShape": {0},
    "Loop": {0, 1},  # the trip count and initial condition: a Loop unrolls when they are known
    "Resize": {1, 2, 3}, "AffineGrid": {1}, "Col2Im": {1, 2}, "CenterCropPad": {1}, "CumProd": {1},
    **{op: {1} for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
}


def _is_operand(v) -> bool:
    """A small graph input used only as a shape operand."""
    return (v.shape is not None and len(v.shape) <= 1 and bool(v.uses)
            and all(i in _OPERAND_SLOTS.get(n.op, ()) for n, i in v.uses))


class CompiledRep(BackendRep):
    """A prepared model: the imported IR graph, compiled for the host (``codegen.build``).

    A model whose shape operands (reshape targets, reduction axes, pads, ...) are graph inputs
    cannot be compiled ahead of time: the compiler needs them when it generates code. Such a
    model is compiled on ``run`` instead, once per distinct value of its small integer inputs,
    with those inputs bound as constants (value specialization; the cache keeps each build).
    ``specialized`` tells whether that happened.
    """

    def __init__(self, model: onnx.ModelProto, target: str = "x86"):
        from .frontend.onnx_import import import_onnx
        from .ir import UnsupportedOpError

        self.model_proto = model
        self.target = target
        self.graph = import_onnx(model)
        self.specialized = False
        self._cache: dict[bytes, tuple] = {}
        try:
            self.model = self._build(self.graph)
        except UnsupportedOpError as e:
            self._operands = [v.name for v in self.graph.inputs if _is_operand(v)]
            if "known only at run time" not in str(e) or not self._operands:
                raise
            self.specialized = True
            self.model = None

    def _build(self, graph: Graph):
        from .codegen.build import build

        return build(graph, self.target).load()

    def _specialize(self, feed: dict):
        from onnx import numpy_helper

        from .frontend.onnx_import import import_onnx

        key = b"".join(np.asarray(feed[n]).tobytes() + str(np.shape(feed[n])).encode() for n in self._operands)
        if key not in self._cache:
            m = onnx.ModelProto()
            m.CopyFrom(self.model_proto)
            keep = [i for i in m.graph.input if i.name not in self._operands]
            del m.graph.input[:]
            m.graph.input.extend(keep)
            for n in self._operands:
                m.graph.initializer.append(numpy_helper.from_array(np.asarray(feed[n]), n))
            self._cache[key] = self._build(import_onnx(m))
        return self._cache[key]

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        feed = _feed(self.graph.input_names(), inputs)
        model = self.model
        if self.specialized:
            model = self._specialize(feed)
            feed = {k: v for k, v in feed.items() if k not in self._operands}
        out = model.run(feed)
        return tuple(out[name] for name in self.graph.output_names())


class CompiledBackend(_CpuBackend):
    """Runs ONNX models through optc's ONNX frontend, compiled by TVM for the host x86 CPU."""

    target = "x86"

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> CompiledRep:
        super().prepare(model, device, **kwargs)
        return CompiledRep(model, cls.target)
