"""Targets: one object per target machine (``targets.base.Target``) holding everything codegen
and the runtime need to know about it. Families: x86-64 (``x86.py``), arm64 cross-compiled with
NEON (``arm64.py``) — both LLVM CPUs (``cpu.py``) — and CUDA GPUs (``cuda.py``)."""

from .base import Target, TargetError, device_for, get_target, host_problem, known_targets, presets

__all__ = ["Target", "TargetError", "device_for", "get_target", "host_problem", "known_targets", "presets"]
