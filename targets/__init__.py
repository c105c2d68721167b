"""Targets: x86-64 today; arm64 (cross-compiled, NEON) and CUDA slot in through the same
interface (``targets.base.Target``)."""

from .base import Target, TargetError, get_target, host_problem, known_targets

__all__ = ["Target", "TargetError", "get_target", "host_problem", "known_targets"]
