"""Frontends: import models from torch.export and ONNX into the optc IR, and export IR to ONNX."""

from .loader import load_model

__all__ = ["load_model"]
