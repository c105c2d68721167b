"""Kernels of ir/ops/signal.py: the Hann, Hamming and Blackman windows (computed in float64 by
the op module's formula, then cast to ``output_datatype``)."""

from __future__ import annotations

import torch

from .. import checks
from ..ops.signal import window_size_negative, window_values
from .engine import as_ints, kernel


@kernel("HannWindow", "HammingWindow", "BlackmanWindow")
def _window(node, size):
    (length,) = as_ints(size)
    if length < 0:
        raise checks.invalid(node, window_size_negative())
    return torch.from_numpy(window_values(node.op, length, bool(node.attrs["periodic"])))
