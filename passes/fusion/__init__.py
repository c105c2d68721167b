"""Fusion rewrites: one module per pattern, each ``fuse_<pattern>(graph) -> int`` (matches
rewritten, graph edited in place, dead nodes removed). Each matches the spellings of all three
import paths (torch.export, TorchScript ONNX, dynamo ONNX). ``ALL_FUSIONS`` lists them in the
order to run them: bigger patterns first, so a smaller one never breaks a bigger one apart.
Every fusion is a ``Rule`` on the rewriter in ``_rewriter.py`` (match with readable reasons →
rewrite); ``explain_fusions`` reports why each anchor that did not fuse did not.
"""

from . import attention, conv_bias_relu, conv_bn, gelu, layernorm, linear, residual_layernorm, rmsnorm, rotary, silu
from ._rewriter import NoMatch, Outcome, Rule, apply_rule
from .attention import fuse_attention
from .conv_bias_relu import fuse_conv_bias_relu
from .conv_bn import fuse_conv_bn
from .gelu import fuse_gelu
from .layernorm import fuse_layernorm
from .linear import fuse_linear
from .residual_layernorm import fuse_residual_layernorm
from .rmsnorm import fuse_rmsnorm
from .rotary import fuse_rotary
from .silu import fuse_silu

# linear after gelu/silu so it absorbs their Gelu/Silu as its activation; conv_bn before
# conv_bias_relu so the folded Conv then takes its Relu.
ALL_FUSIONS = [fuse_attention, fuse_layernorm, fuse_rmsnorm, fuse_gelu, fuse_silu, fuse_rotary, fuse_residual_layernorm,
               fuse_linear, fuse_conv_bn, fuse_conv_bias_relu]


def fusion_rules() -> list[Rule]:
    """The rules behind ``ALL_FUSIONS``, in the same order (fresh: a rule may keep state per run)."""
    return [attention.RULE, layernorm.RULE, rmsnorm.RULE, gelu.RULE, silu.RULE, rotary.RULE,
            residual_layernorm.residual_layernorm_rule(),
            linear.linear_rule(), conv_bn.RULE, conv_bias_relu.RULE]


def explain_fusions(graph) -> list[Outcome]:
    """Run every fusion in order on ``graph`` (in place: pass a copy), keeping for each rule the
    anchors that did not fuse and why — what ``optc inspect --explain-fusion`` prints. An anchor
    a later rule fused (a mean that is an RMSNorm's, not a LayerNorm's) is not listed."""
    outcomes = [apply_rule(graph, rule, explain=True) for rule in fusion_rules()]
    alive = {n.name for n in graph.nodes}
    for o in outcomes:
        o.misses = [m for m in o.misses if m["node"] in alive]
    return outcomes


def fuse_all(graph) -> dict[str, int]:
    """Run every fusion once, in order; returns matches per pattern."""
    return {fn.__name__[len("fuse_"):]: fn(graph) for fn in ALL_FUSIONS}


__all__ = ["ALL_FUSIONS", "NoMatch", "Outcome", "Rule", "apply_rule", "explain_fusions", "fusion_rules", "fuse_all", "fuse_attention", "fuse_conv_bias_relu", "fuse_conv_bn", "fuse_gelu", "fuse_layernorm",
           "fuse_linear", "fuse_residual_layernorm", "fuse_rmsnorm", "fuse_rotary", "fuse_silu"]
