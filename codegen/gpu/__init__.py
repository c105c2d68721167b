"""optc's GPU kernels and passes (the CUDA targets of ``targets/cuda.py`` use them).

=======================  ===============================================  ===============
piece                    does                                             file
=======================  ===============================================  ===============
FoldTransposePairs       cancels the transposes around the fused          ../schedules/
 (Relax, fast path)      attention (it reads/writes [b, s, h, d])         attention.py
DeviceChecks (Relax)     element-wise run-time checks -> device flag      checks.py
                         kernel + host assert
ParallelToThreads        pre-scheduled CPU-style kernels (``parallel``    threads.py
 (after FuseTIR)         loops: the CumSum/CumProd scan) -> blockIdx x
                         threadIdx
schedule rules           dlight Matmul, GEMV, Reduction, GeneralReduction, rules.py
                         Transpose; Injective; dl.gpu.Fallback last
fused Attention          flash-style kernel, scores never in global       attention.py
                         memory (``Target.attention_kernel``)
gpu_check                refuses a kernel touching global memory outside  ../gpu_check.py
                         any thread binding
nvcc                     finds nvcc, compiles TVM's CUDA C (SASS + PTX)   toolchain.py
=======================  ===============================================  ===============
"""

from __future__ import annotations


def relax_passes(target) -> list:
    """Relax passes of the fast path (``build(fast_schedules=True)``), before legalization."""
    from ..schedules.attention import FoldTransposePairs

    return [FoldTransposePairs()]


def pre_legalize_passes(target) -> list:
    """Relax passes every CUDA build needs, before legalization: element-wise run-time checks
    become a device flag kernel plus a host assert (``checks.py``)."""
    from .checks import DeviceChecks

    return [DeviceChecks()]


def post_fusion_passes(target) -> list:
    """Passes after FuseOps/FuseTIR, before the schedule rules: pre-scheduled CPU-style kernels
    (``parallel`` loops) get thread bindings (``threads.py``)."""
    from .threads import ParallelToThreads

    return [ParallelToThreads()]
