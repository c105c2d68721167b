"""The reference interpreter: executes any IR graph with torch on CPU.

It is the numeric ground truth that passes and codegen are checked against, and the engine for
calibration. Every op of the catalog (``optc.ir.all_schemas()``) has a kernel with the
semantics of the newest ONNX definition of the op of the same name (``ir/ops`` documents where
optc differs, e.g. its own composite ``Attention``).

    >>> from optc.ir.interpreter import run
    >>> outputs = run(graph, {"x": x})                     # numpy in, numpy out
    >>> interp = Interpreter(graph)                        # reuse: dispatch planned once
    >>> outs = interp.run_torch({"x": xt}, constants={"w": w_requiring_grad})

Kernels live in one module per op family, mirroring ``ir/ops``; ``@kernel("Op")`` registers one.
"""

from .engine import (
    COMPUTE_DTYPE,
    TORCH_DTYPE,
    Interpreter,
    evaluate_node,
    get_kernel,
    kernel,
    registered_ops,
    run,
)
from . import kernels_elementwise, kernels_nn, kernels_reduce, kernels_shape  # noqa: E402,F401  (register kernels)
from . import kernels_activation, kernels_image, kernels_loss, kernels_sequence, kernels_signal  # noqa: E402,F401  (ONNX loss / image / sequence / signal ops)
from . import kernels_control_flow, kernels_recurrent  # noqa: E402,F401  (If / Loop / Scan; RNN / GRU / LSTM)
from . import kernels_quant  # noqa: E402,F401  (quantization ops, BitCast)
from . import kernels_qlinear  # noqa: E402,F401  (QLinear)

__all__ = ["COMPUTE_DTYPE", "TORCH_DTYPE", "Interpreter", "evaluate_node", "get_kernel", "kernel", "registered_ops", "run"]
