"""optc: a compiler-style graph optimizer for neural networks."""

__version__ = "0.1.0"
