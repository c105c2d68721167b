"""What the precision passes know about one graph: its quantizable projections, each layer's
weight at each precision (computed once, cached), and the measured fidelity of a plan — a
precision per layer. ``quantize`` applies one precision everywhere; ``assign-precision`` measures
each layer alone at each candidate and solves for the cheapest plan within a budget.

Precisions:

=========  ===========================================================  ============
name       storage                                                      activations
=========  ===========================================================  ============
``fp32``   unchanged                                                    float32
``bf16``   bfloat16 values                                              rounded to bfloat16
``fp16``   float16 values                                               rounded to float16
``int8``   int8 codes, one scale per output channel (symmetric)         per-token uint8 (dynamic)
``int4``   int4 codes, one scale per group of rows (``grid``: symmetric;   float32 (weight-only)
           uint4 codes with an integer or a float32 zero point)
=========  ===========================================================  ============
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from ...ir.graph import Graph
from ...ir.types import DType
from .activations import capture, input_gram, rows
from .fidelity import Fidelity, measure, reference_outputs
from .projections import Projection, find_projections, name_matches, name_patterns
from .quant_rewrite import LayerQuant, float_weight, quantize_projection

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
INT_BITS = {"int8": 8, "int4": 4}
METHODS = ("rtn", "gptq")
NORMALIZATIONS = frozenset({"LayerNormalization", "AddLayerNorm", "RMSNormalization"})


@dataclass(frozen=True)
class QuantConfig:
    """How integer precisions are computed (the pass options they come from)."""

    method: str = "auto"  # rtn | gptq | auto (gptq for int4, rtn for int8)
    group_size: int = 128  # int4 rows per scale
    grid: str = "symmetric"  # int4 codes: symmetric | asymmetric | minmax (weight_quant.GRIDS)
    int8_act: str = "dynamic"  # dynamic | static | none
    act_qmax: int = 127
    damp: float = 0.01
    smooth: float = 0.5  # SmoothQuant migration strength alpha for int8 activations; 0 = off

    def fits(self, precisions) -> bool:
        """Whether any of ``precisions`` is fitted to calibration data (GPTQ, static ranges)."""
        return any(p in INT_BITS and self.method_for(p) == "gptq" for p in precisions) or (
            "int8" in precisions and (self.int8_act == "static" or self.smooth > 0))

    def method_for(self, precision: str) -> str:
        if self.method != "auto":
            return self.method
        return "gptq" if precision == "int4" else "rtn"


def _shared_beyond_lookups(p) -> bool:
    """Whether the projection's weight has uses other than the projection and table lookups.
    A language model's head tied to its embedding (``ir/tying.py``) is also read by a
    ``Gather``: the head may still be quantized — the lookup keeps reading the float table, the
    head gets its codes (1/8 of the table more at int4, and a decode step reads the codes)."""
    others = [(node, i) for node, i in p.weight.uses if node is not p.node]
    return any(node.op != "Gather" or i != 0 for node, i in others) or len(others) + 1 != len(p.weight.uses)


@dataclass
class QLayer:
    """One quantizable projection."""

    name: str
    in_features: int
    out_features: int
    input_name: str

    @property
    def params(self) -> int:
        return self.in_features * self.out_features


def eligible(graph: Graph, include: str = "", exclude: str = "") -> tuple[list[QLayer], dict[str, str]]:
    """The projections the precision passes may change, and why each other one is skipped."""
    inc, exc = name_patterns(include), name_patterns(exclude)
    layers, skipped = [], {}
    for p in find_projections(graph):
        if inc and not name_matches(p.name, inc):
            skipped[p.name] = "not included"
        elif exc and name_matches(p.name, exc):
            skipped[p.name] = "excluded"
        elif _shared_beyond_lookups(p) or p.weight in graph.outputs:
            skipped[p.name] = "weight shared"
        elif p.weight.dtype is not DType.FLOAT32 or p.input.dtype is not DType.FLOAT32:
            skipped[p.name] = f"not float32 ({p.weight.dtype.value})"
        else:
            layers.append(QLayer(p.name, p.in_features, p.out_features, p.input.name))
    return layers, skipped


@dataclass
class QuantModel:
    graph: Graph
    layers: list[QLayer]
    calibration: list[Mapping[str, np.ndarray]]
    """Input sets fidelity is measured on."""
    config: QuantConfig = field(default_factory=QuantConfig)
    fit_sets: list[Mapping[str, np.ndarray]] | None = None
    """Input sets GPTQ's Hessians and static activation ranges come from (default: ``calibration``)."""
    _cache: dict = field(default_factory=dict)
    _grams: dict | None = None
    _ranges: dict | None = None
    _reference: list | None = None

    # -- per-layer storage ---------------------------------------------------------------------
    def weights(self) -> dict[str, Projection]:
        return {p.name: p for p in find_projections(self.graph)}

    def layer_quant(self, layer: QLayer, precision: str) -> LayerQuant | None:
        """The layer stored at ``precision`` (None for fp32), computed once."""
        if precision == "fp32":
            return None
        key = (layer.name, precision)
        if key not in self._cache:
            self._cache[key] = self._quantize(layer, precision)
        return self._cache[key]

    def _quantize(self, layer: QLayer, precision: str) -> LayerQuant:
        from .weight_quant import quantize_gptq, quantize_rtn

        w = self.weights()[layer.name].matrix().astype(np.float32)
        if precision in ("bf16", "fp16"):
            return LayerQuant(float_weight(w, precision))
        bits, cfg = INT_BITS[precision], self.config
        group = cfg.group_size if precision == "int4" else 0
        grid = cfg.grid if precision == "int4" else "symmetric"
        act = cfg.int8_act if precision == "int8" else "none"
        smooth = None
        if act != "none" and cfg.smooth > 0 and self._normalized_input(layer):
            smooth = self._smoothing(layer)
            w = (w.astype(np.float64) / smooth[:, None].astype(np.float64)).astype(np.float32)
        if cfg.method_for(precision) == "gptq":
            gram, count = self.grams()[layer.input_name]
            if smooth is not None:  # the Hessian of the smoothed inputs
                m = smooth.astype(np.float64)
                gram = m[:, None] * gram * m[None, :]
            qw = quantize_gptq(w, 2.0 * gram / max(count, 1), bits, group, grid, damp=cfg.damp)
        else:
            qw = quantize_rtn(w, bits, group, grid)
        codes, zero = qw.typed()
        xs = xz = None
        if act == "static":
            cmin, cmax = self.channel_ranges()[layer.input_name]
            m = 1.0 if smooth is None else smooth.astype(np.float64)
            xs, xz = static_params(float(np.min(cmin * m, initial=0.0)), float(np.max(cmax * m, initial=0.0)), cfg.act_qmax)
        return LayerQuant(codes, qw.scale.astype(np.float32), zero, group, act, cfg.act_qmax, xs, xz, smooth)

    def _normalized_input(self, layer: QLayer) -> bool:
        """Whether the layer reads a normalization's output — the layers SmoothQuant smooths (Q/K/V,
        the first FFN layer). After a GELU (the second FFN layer) it hurts: MiniLM static int8
        layer 0 FFN2 alone 0.9957 -> 0.9746 calibration cosine with alpha 0.5."""
        producer = self.graph.value(layer.input_name).producer
        return producer is not None and producer.op in NORMALIZATIONS

    def _smoothing(self, layer: QLayer) -> np.ndarray:
        """SmoothQuant: the per-channel multiplier ``1 / s`` of the layer's activations (float32),
        one for every layer reading the same input (Q, K and V): ``s`` comes from all their
        weights together, so that the siblings quantize their input alike and codegen can run
        them as one GEMM (``passes/fusion/siblings.py``)."""
        from .smoothquant import smoothing_factors

        key = ("smooth", layer.input_name)
        if key not in self._cache:
            cmin, cmax = self.channel_ranges()[layer.input_name]
            projections = self.weights()
            siblings = [projections[l.name].matrix() for l in self.layers if l.input_name == layer.input_name]
            s = smoothing_factors(np.maximum(np.abs(cmin), np.abs(cmax)), siblings, self.config.smooth)
            # Only shrink (s >= 1): amplifying a channel that was quiet on the calibration data (a
            # GELU unit that rarely fires) blows it past a static range when it fires later (MiniLM
            # static int8: held-out cosine 0.976 -> 0.935 at alpha 0.5, 0.78 at 0.3, before this clamp).
            self._cache[key] = (1.0 / np.maximum(s, 1.0)).astype(np.float32)
        return self._cache[key]

    def bytes_at(self, layer: QLayer, precision: str) -> int:
        q = self.layer_quant(layer, precision)
        return 4 * layer.params if q is None else q.nbytes

    # -- calibration statistics ----------------------------------------------------------------
    def fitting(self) -> list[Mapping[str, np.ndarray]]:
        return self.fit_sets if self.fit_sets is not None else self.calibration

    def grams(self) -> dict[str, tuple[np.ndarray, int]]:
        if self._grams is None:
            self._grams = input_gram(self.graph, [l.input_name for l in self.layers], self.fitting())
        return self._grams

    def channel_ranges(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per layer input: per-channel (min, max) over the fitting rows (padding excluded)."""
        if self._ranges is None:
            from ..memo import memoized

            names, fit = list(dict.fromkeys(l.input_name for l in self.layers)), list(self.fitting())
            self._ranges = memoized("channel_ranges", self.graph, fit, tuple(names),
                                    lambda: _channel_ranges(self.graph, names, fit))
        return self._ranges

    # -- plans ---------------------------------------------------------------------------------
    def apply(self, plan: Mapping[str, str], graph: Graph | None = None) -> Graph:
        """A copy of the graph with each layer at its planned precision (or ``graph`` itself)."""
        g = self.graph.clone() if graph is None else graph
        todo = {name: p for name, p in plan.items() if p != "fp32"}
        for proj in find_projections(g):
            if proj.name in todo:
                layer = next(l for l in self.layers if l.name == proj.name)
                quantize_projection(g, proj, self.layer_quant(layer, todo[proj.name]))
        if todo:
            g.infer_types()
        return g

    def reference(self) -> list:
        if self._reference is None:
            self._reference = reference_outputs(self.graph, self.calibration)
        return self._reference

    def fidelity(self, plan: Mapping[str, str], sets: int | None = None) -> Fidelity:
        n = len(self.calibration) if sets is None else sets
        return measure(self.graph, self.apply(plan), self.calibration[:n], reference=self.reference()[:n])

    def size(self, plan: Mapping[str, str]) -> int:
        """Bytes of the quantizable layers' weights under ``plan``."""
        return sum(self.bytes_at(l, plan.get(l.name, "fp32")) for l in self.layers)


def static_params(lo: float, hi: float, qmax: int) -> tuple[float, int]:
    """Per-tensor activation scale and zero point for the range ``[lo, hi]`` (0 included), the
    same formula as the dynamic per-row quantization."""
    lo, hi = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    scale = (hi - lo) / np.float32(qmax)
    if scale == 0:
        scale = np.float32(1.0)
    zp = int(np.clip(np.round(-lo / scale), 0, qmax))
    return float(scale), zp


def model_bytes(graph: Graph) -> int:
    """Bytes of every constant in packed storage: what the model weighs."""
    return sum(v.dtype.nbytes(v.const.size) for v in graph.constants.values())


def _channel_ranges(graph: Graph, names: list[str], fit: list[Mapping[str, np.ndarray]]
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for feed, values in zip(fit, capture(graph, names, fit)):
        for n in names:
            r = rows(values[n], feed)
            if r.shape[0] == 0:
                continue
            lo, hi = r.min(axis=0), r.max(axis=0)
            if n in out:
                lo, hi = np.minimum(out[n][0], lo), np.maximum(out[n][1], hi)
            out[n] = (lo, hi)
    for n in names:
        out.setdefault(n, (np.zeros(1), np.zeros(1)))
    return out
