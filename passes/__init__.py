"""optc's passes: the pass manager, pass context, instruments, analyses and one file per pass.

    from optc.passes import PassManager, PassContext, VerifyEach
    result = PassManager.parse("default").run(graph, PassContext(instruments=[VerifyEach()]))

``optc passes`` (or ``pass_info()``) lists every registered pass with its options.
"""

from .base import Pass, PassError, PassResult, get_pass, option, pass_info, register_pass, registered_passes
from .context import PassContext, random_inputs
from .instruments import CheckNumerics, Instrument, PrintIRAfter, TimePasses, VerifyEach
from .manager import PassManager, PipelineResult, run_pipeline
from .pipeline import CLEANUP_PIPELINE, DEFAULT_PIPELINE, default_pipeline_text, format_pipeline, parse_pipeline

# Register the built-in passes.
from . import cse, dce, fold_constants, fold_shapes, simplify, tie_weights  # noqa: E402,F401
from . import unroll  # noqa: E402,F401  (unroll-control-flow)
from . import fusion_passes  # noqa: E402,F401  (fuse-* passes, once passes/fusion has them)
from . import compression  # noqa: E402,F401  (lossy passes)

__all__ = [
    "CheckNumerics", "CLEANUP_PIPELINE", "DEFAULT_PIPELINE", "Instrument", "Pass", "PassContext", "PassError", "PassManager", "PassResult",
    "PipelineResult", "PrintIRAfter", "TimePasses", "VerifyEach", "default_pipeline_text", "format_pipeline", "get_pass",
    "option", "parse_pipeline", "pass_info", "random_inputs", "register_pass", "registered_passes", "run_pipeline",
]
