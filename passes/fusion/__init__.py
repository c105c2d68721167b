"""Fusion rewrites: one module per pattern, each ``fuse_<pattern>(graph) -> int`` (matches
rewritten, graph edited in place, dead nodes removed). Each matches the spellings of all three
import paths (torch.export, TorchScript ONNX, dynamo ONNX). ``ALL_FUSIONS`` lists them in the
order to run them: bigger patterns first, so a smaller one never breaks a bigger one apart.
"""

from .attention import fuse_attention
from .conv_bias_relu import fuse_conv_bias_relu
from .conv_bn import fuse_conv_bn
from .gelu import fuse_gelu
from .layernorm import fuse_layernorm
from .linear import fuse_linear
from .residual_layernorm import fuse_residual_layernorm
from .rmsnorm import fuse_rmsnorm
from .silu import fuse_silu

# linear after gelu/silu so it absorbs their Gelu/Silu as its activation; conv_bn before
# conv_bias_relu so the folded Conv then takes its Relu.
ALL_FUSIONS = [fuse_attention, fuse_layernorm, fuse_rmsnorm, fuse_gelu, fuse_silu, fuse_residual_layernorm,
               fuse_linear, fuse_conv_bn, fuse_conv_bias_relu]


def fuse_all(graph) -> dict[str, int]:
    """Run every fusion once, in order; returns matches per pattern."""
    return {fn.__name__[len("fuse_"):]: fn(graph) for fn in ALL_FUSIONS}


__all__ = ["ALL_FUSIONS", "fuse_all", "fuse_attention", "fuse_conv_bias_relu", "fuse_conv_bn", "fuse_gelu", "fuse_layernorm",
           "fuse_linear", "fuse_residual_layernorm", "fuse_rmsnorm", "fuse_silu"]
