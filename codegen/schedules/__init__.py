"""optc's default CPU schedules: untuned code must already be fast.

The CPU targets (``targets/cpu.py``) take their kernels from here; other families bring their own.

``relax_passes(target)`` run on the Relax module before legalization (e.g. rewriting a matmul
with a constant weight into a kernel that reads the weight pre-packed at compile time), and
``schedule_rules(target)`` are dlight-style rules applied to every TIR function after fusion.

What runs where (CPU targets):

=====================  =====================================  ==============================
piece                  matches                                 file
=====================  =====================================  ==============================
FoldTransposePairs     relax ``permute_dims`` of a              attention.py
 (Relax pass)          ``permute_dims`` that cancels it (the
                       fused attention's [b,s,h,d] output),
                       then dead code (transposes the kernel
                       reads through)
PackDenseWeights       relax ``matmul(x, W)``, W a 2-D f32      dense.py
 (Relax pass)          constant (or permute_dims of one):
                       packed at compile time; ``matmul(A, B)``
                       f32, same rank, equal batch dims: B
                       packed at run time (attention)
QDenseRule             PrimFuncs with an ``optc_qdense_pad``   qdense.py
                       block (int8 GEMM, + fused epilogue);
                       only where ``int8.int8_microkernel``
                       finds an instruction (x86 AVX2+)
DenseRule              PrimFuncs with an ``optc_dense_pad``    dense.py
                       block (+ fused elementwise epilogue)
QuantizeRowsRule       per-row uint8 quantization             qdense.py
                       (``optc_qrows_codes`` block)
ReductionRule          softmax / layer norm / other row        reduction.py
                       reductions (+ elementwise around them)
ElementwiseRule        spatial-only PrimFuncs                  elementwise.py
=====================  =====================================  ==============================
"""

from __future__ import annotations


def relax_passes(target) -> list:
    """Relax passes that choose kernel implementations and weight layouts for ``target``.

    They expect weights bound as ``relax.Constant`` (e.g. after ``relax.transform.BindParams``)
    and must run before ``LegalizeOps``.
    """
    from .attention import FoldTransposePairs
    from .dense import PackDenseWeights
    from .fastmath import FastMath
    from .rows import RowKernels

    return [FoldTransposePairs(), PackDenseWeights(target), RowKernels(target), FastMath()]


def schedule_rules(target) -> list:
    """Schedule rules, most specific first, for ``tvm.s_tir.dlight.ApplyDefaultSchedule``.

    Apply after ``LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR``.
    """
    from .dense import DenseRule
    from .elementwise import ElementwiseRule
    from .int8 import int8_microkernel
    from .qdense import QDenseRule, QuantizeRowsRule
    from .reduction import ReductionRule
    from .rows import RowRule

    int8 = [QDenseRule(target)] if int8_microkernel(target) is not None else []
    return int8 + [DenseRule(target), QuantizeRowsRule(target), RowRule(target), ReductionRule(target),
                   ElementwiseRule(target)]


def finalize_passes(target) -> list:
    """Passes to run on the module *after* the Relax finalize passes (VMShapeLower), right before
    ``tvm.compile``.

    ``MarkShapeFuncsNoAlias``: TVM 0.27's LLVM codegen drops per-buffer alias info (TBAA) for
    every function of a module as soon as one PrimFunc lacks ``tirx.noalias`` -- and the
    ``shape_func`` that VMShapeLower adds for symbolic shapes lacks it. Without alias info LLVM
    cannot keep matmul accumulators in registers (they are re-stored every FMA): the dense
    kernel runs 2x slower. Shape funcs have a single buffer parameter, so marking them is safe.

    ``UnrollLanePredicatedVectors``: a vectorized loop whose lanes branch differently (concat,
    pad) would be scalarized by TVM and re-vectorized by LLVM, CPU-dependently and, with LLVM 22
    at 16 lanes, wrongly (``lanes.py``): unroll it instead.
    """
    from .common import MarkShapeFuncsNoAlias
    from .lanes import UnrollLanePredicatedVectors

    return [MarkShapeFuncsNoAlias(), UnrollLanePredicatedVectors()]


def build_notes(graph, target) -> list[str]:
    """Lines for the build report about ops that did not get their dedicated kernel on
    ``target`` (e.g. an ``Attention`` variant the fused kernel does not take), so a slower path
    is never silent."""
    from .attention import decomposed_notes

    return decomposed_notes(graph, target)
