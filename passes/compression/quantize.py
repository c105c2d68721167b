"""``quantize``: every eligible projection at one precision (``quant_model.py`` lists them).

    quantize                                   int8 weights per channel, activations per token,
                                               SmoothQuant (alpha 0.5) on normalized inputs
    quantize{precision=int4}                   int4 weight-only, groups of 128 rows, GPTQ
    quantize{precision=int4,method=rtn}        the round-to-nearest baseline
    quantize{precision=int4,grid=minmax}       uint4 codes on each group's own range (float zero
                                               point): GGUF Q4_1 weights come back unchanged
    quantize{precision=bf16}                   bfloat16 weights (activations rounded to bf16)
    quantize{act=static}                       int8 with per-tensor activation scales from calibration
    quantize{smooth=0}                         ... without SmoothQuant's outlier migration
    quantize{min_cosine=0.99}                  fail unless the calibration mean cosine stays >= 0.99

Everything is measured: the result's fidelity on the calibration inputs (random inputs without
them, said so in the report) is in the report with each layer's bytes before and after, and a
result that misses ``min_cosine`` — or is ruined outright (``fidelity.RUIN_COSINE``) — is refused
with the graph untouched. ``act_qmax`` follows the target (``Target.int8_activation_max``): 127
where the int8 kernel needs 7-bit activations (AVX2 without VNNI), 255 elsewhere, 127 when no
target is known (exact on every kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


from ...ir.errors import OptcError
from ...ir.graph import Graph
from ...ir.verifier import verify
from ..base import Pass, PassError, PassResult, option, register_pass
from .fidelity import Fidelity, held_back, measure, refuse_ruin
from .low_rank import _random_inputs
from .quant_model import METHODS, QuantConfig, QuantModel, eligible, model_bytes
from .weight_quant import GRIDS

PRECISIONS = ("int8", "int4", "bf16", "fp16")
GROUP_SIZES = (32, 64, 128)


def context_target(ctx):
    """The context's target as an optc ``Target`` (None when the passes run target-independent)."""
    target = getattr(ctx, "target", None)
    if isinstance(target, str):
        from ...targets import get_target

        target = get_target(target)
    return target


def target_act_qmax(ctx) -> int:
    """The context target's int8 activation range (127 without a target: exact everywhere)."""
    target = context_target(ctx)
    return 127 if target is None else int(target.int8_activation_max())


def check_kernels(name: str, ctx, precisions, act: str) -> None:
    """Refuse, before any work, a precision the context's target has no kernel for."""
    target = context_target(ctx)
    if target is not None and "int8" in precisions:
        problem = target.quantized_kernel_problem(act)
        if problem is not None:
            raise PassError(f"{name}: {problem}")


class PrecisionOptions:
    """Checks and config shared by ``quantize`` and ``assign-precision``."""

    def _config(self, ctx) -> QuantConfig:
        if self.method not in ("auto",) + METHODS:
            raise PassError(f"{self.name}: method must be auto, rtn or gptq, got {self.method!r}")
        if self.group_size not in GROUP_SIZES:
            raise PassError(f"{self.name}: group_size must be one of {', '.join(map(str, GROUP_SIZES))}, got {self.group_size}")
        if self.grid not in GRIDS:
            raise PassError(f"{self.name}: grid must be one of {', '.join(GRIDS)}, got {self.grid!r}")
        if self.act not in ("dynamic", "static", "none"):
            raise PassError(f"{self.name}: act must be dynamic, static or none, got {self.act!r}")
        if self.act_qmax not in (0, 127, 255):
            raise PassError(f"{self.name}: act_qmax must be 0 (from the target), 127 or 255, got {self.act_qmax}")
        if not -1.0 <= self.min_cosine <= 1.0:
            raise PassError(f"{self.name}: min_cosine must be in [-1, 1], got {self.min_cosine}")
        if not 0.0 <= self.smooth <= 1.0:
            raise PassError(f"{self.name}: smooth (SmoothQuant's alpha) must be in [0, 1], got {self.smooth}")
        qmax = self.act_qmax or target_act_qmax(ctx)
        return QuantConfig(self.method, self.group_size, self.grid, self.act, qmax, smooth=self.smooth)

    def _calibration(self, graph: Graph, ctx, needs: str, fitted: bool):
        """``(fit sets, measured sets, what the measurement is on)``. When something is fitted to
        the calibration data (GPTQ, static ranges) and there are several input sets, a quarter of
        them is held back (``fidelity.held_back``)."""
        calib = [dict(c) for c in ctx.calibration]
        if not calib:
            if needs:
                raise PassError(f"{self.name}: {needs} needs calibration inputs (--calib), or use method=rtn / act=dynamic")
            sets = _random_inputs(graph, ctx)
            return sets, sets, "random"
        if fitted and len(calib) >= 2:
            fit, held = held_back(calib)
            return fit, held, f"calibration (the {len(held)} of {len(calib)} input sets not fitted to)"
        return calib, calib, "calibration"


@register_pass
@dataclass
class Quantize(PrecisionOptions, Pass):
    """Store every eligible dense layer's weight at one precision — int8 (per-channel weights,
    per-token activations), int4 (weight-only, grouped, GPTQ), bf16 or fp16 — measured on the
    calibration data and refused when it misses the budget."""

    name: ClassVar[str] = "quantize"
    lossy: ClassVar[bool] = True
    precision: str = option("int8", "int8, int4, bf16 or fp16")
    method: str = option("auto", "integer weights: rtn (round to nearest), gptq (error-compensating, needs calibration) "
                                 "or auto (gptq for int4, rtn for int8)")
    group_size: int = option(128, "int4: weight rows per scale (32, 64 or 128)")
    grid: str = option("symmetric", "int4 codes: symmetric (int4, no zero point), asymmetric (uint4, integer zero "
                                    "point) or minmax (uint4, float zero point: each group's own range, GGUF's Q4_1)")
    act: str = option("dynamic", "int8 activations: dynamic (per token, at run time), static (per tensor, from "
                                 "calibration) or none (weight-only)")
    act_qmax: int = option(0, "largest int8 activation code: 0 = what the target's kernel multiplies exactly, 127 or 255")
    smooth: float = option(0.5, "int8 activations: SmoothQuant's migration strength alpha on normalized inputs; 0 = off")
    min_cosine: float = option(0.0, "accuracy budget: smallest calibration mean cosine allowed; 0 = none")
    include: str = option("", "only weights whose name matches one of these patterns (a|b*; a word matches as a substring)")
    exclude: str = option("pooler|classifier|lm_head", "skip weights whose name matches one of these patterns")

    def run(self, graph: Graph, ctx) -> PassResult:
        if self.precision not in PRECISIONS:
            raise PassError(f"quantize: precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        config = self._config(ctx)
        check_kernels("quantize", ctx, [self.precision], self.act)
        integer = self.precision in ("int8", "int4")
        needs = ("method=gptq" if integer and config.method_for(self.precision) == "gptq" else
                 "act=static" if self.precision == "int8" and self.act == "static" else "")
        fit, calib, source = self._calibration(graph, ctx, needs, config.fits([self.precision]))
        layers, skipped = eligible(graph, self.include, self.exclude)
        if not layers:
            raise PassError("quantize: no eligible weights (float32 projections by a constant weight"
                            + (f"; skipped: {', '.join(sorted(set(skipped.values())))})" if skipped else "; the graph has none)"))
        model = QuantModel(graph, layers, calib, config, fit)
        plan = {l.name: self.precision for l in layers}
        try:
            quantized = model.apply(plan)
            verify(quantized)
            fid = measure(graph, quantized, calib, reference=model.reference())
        except OptcError as e:
            raise PassError(f"quantize: {' '.join(str(e).split())}") from e
        refuse_ruin("quantize", fid, source, ctx)
        if self.min_cosine and fid.mean_cosine < self.min_cosine:
            raise PassError(f"quantize: precision={self.precision} gives {source} mean cosine {fid.mean_cosine:.4f}, "
                            f"below min_cosine={self.min_cosine}")
        report = precision_report(model, plan, graph, quantized, fid, source, skipped)
        model.apply(plan, graph)
        return PassResult(True, report)


def precision_report(model: QuantModel, plan: dict[str, str], graph: Graph, quantized: Graph, fid: Fidelity,
                     source: str, skipped: dict[str, str], sensitivity: dict | None = None) -> dict[str, Any]:
    """Per layer: precision, bytes before/after (and measured sensitivity); the model's bytes
    before/after; the fidelity and what it was measured on."""
    cfg = model.config
    layers = []
    for l in model.layers:
        p = plan.get(l.name, "fp32")
        entry: dict[str, Any] = {"name": l.name, "shape": [l.in_features, l.out_features], "precision": p,
                                 "bytes_before": 4 * l.params, "bytes_after": model.bytes_at(l, p)}
        if p in ("int8", "int4"):
            entry["method"] = cfg.method_for(p)
        if sensitivity and l.name in sensitivity:
            entry["sensitivity"] = {k: round(v, 6) for k, v in sensitivity[l.name].items()}
        layers.append(entry)
    counts: dict[str, int] = {}
    for l in model.layers:
        counts[plan.get(l.name, "fp32")] = counts.get(plan.get(l.name, "fp32"), 0) + 1
    before, after = model_bytes(graph), model_bytes(quantized)
    report: dict[str, Any] = {
        "precisions": counts,
        "int8": {"activations": cfg.int8_act, "act_qmax": cfg.act_qmax, **({"smooth": cfg.smooth} if cfg.smooth else {})}
        if "int8" in counts else None,
        "int4": {"group_size": cfg.group_size, "grid": cfg.grid} if "int4" in counts else None,
        "size": {"model_bytes_before": before, "model_bytes_after": after, "ratio": round(after / max(before, 1), 4),
                 "layers_bytes_before": model.size({}), "layers_bytes_after": model.size(plan)},
        "fidelity": {**fid.as_dict(), "inputs": source},
        "layers": layers,
    }
    if skipped:
        report["skipped"] = skipped
    return {k: v for k, v in report.items() if v is not None}
