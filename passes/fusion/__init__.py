"""Fusion rewrites: one module per pattern, each ``fuse_<pattern>(graph) -> int`` (matches
rewritten, graph edited in place, dead nodes removed). Each matches the spellings of all three
import paths (torch.export, TorchScript ONNX, dynamo ONNX). ``ALL_FUSIONS`` lists them in the
order to run them: bigger patterns first, so a smaller one never breaks a bigger one apart.
"""

from .attention import fuse_attention
from .gelu import fuse_gelu
from .layernorm import fuse_layernorm
from .rmsnorm import fuse_rmsnorm
from .silu import fuse_silu

ALL_FUSIONS = [fuse_attention, fuse_layernorm, fuse_rmsnorm, fuse_gelu, fuse_silu]


def fuse_all(graph) -> dict[str, int]:
    """Run every fusion once, in order; returns matches per pattern."""
    return {fn.__name__[len("fuse_"):]: fn(graph) for fn in ALL_FUSIONS}


__all__ = ["ALL_FUSIONS", "fuse_all", "fuse_attention", "fuse_gelu", "fuse_layernorm", "fuse_rmsnorm", "fuse_silu"]
