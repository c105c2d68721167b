"""``torch.export`` → optc IR.

``import_exported_program(ep)`` walks the FX graph of an :class:`torch.export.ExportedProgram` and
builds an :class:`optc.ir.Graph` (``export_module`` exports an ``nn.Module`` first, ``load_pt2``
reads a ``torch.export.save`` archive):

* parameters, buffers and lifted tensor constants become IR constants named by their state-dict
  key (``encoder.layer.0.attention.self.query.weight``); user inputs become graph inputs named
  after the placeholders (``input_ids``); user outputs become graph outputs named from the output
  pytree (``last_hidden_state``, ``pooler_output``; ``output`` / ``output_0..`` otherwise);
* every FX value's FakeTensor metadata gives the IR type: free symbols of the shape environment
  become named dims (the user's ``torch.export.Dim`` name when it can be recovered, the symbol
  name such as ``s43`` otherwise, or ``dim_names[...]`` when given);
* SymInt values (``aten.sym_size.int``, ``operator.mul`` on sizes, ...) are never translated node
  by node: each is kept as its sympy expression and only *materialized* (``Shape`` → ``Mul`` ...)
  where a tensor op really needs it. Reshape and expand targets are read from the result's
  metadata and folded: a dim equal to the input's at the same position becomes ``0`` (reshape) or
  ``1`` (expand), one remaining symbolic dim becomes ``-1``, so most targets are constants;
* the high-level ops that export keeps (``linear``, ``layer_norm``, ``scaled_dot_product_attention``,
  ``gelu``, ``silu``, ``embedding``, ...) map to their IR counterparts. A program holding any other
  ATen op is first decomposed with ``ep.run_decompositions`` using the default table minus every
  op mapped here, so only the unmapped ops decompose (into core ATen); an op still unmapped then
  raises :class:`optc.ir.UnsupportedOpError`.

``export_decoder(model)`` (``decoder.py``) imports a Hugging Face causal LM with its KV cache as
inputs and outputs, the graph ``ir/decoder.py`` derives prefill and decode steps from.

Python scalars in op arguments become constants of the dtype torch would compute in (the result
dtype recorded in the metadata); inputs are cast where torch's type promotion would.

Layout, mirroring ``optc.ir.interpreter``: ``api`` (the entry points and the refuse-and-retry
loop), ``importer`` (the walk over the FX graph and the emitting helpers handlers share),
``registry`` (``@handles("aten.overload")``), ``decomposition`` (the fallback), ``naming`` (dim and
output names), ``sizes`` and ``dtypes``; then one ``handlers_<family>.py`` per op family. A
handler module registers on import, so each is imported here.
"""

from .api import export_module, import_exported_program, load_pt2
from .decoder import export_decoder, export_decoder_onnx
from .dtypes import torch_dtype
from .registry import mapped_ops
from . import (  # noqa: E402,F401  (register handlers)
    handlers_casts,
    handlers_conv,
    handlers_creation,
    handlers_elementwise,
    handlers_linalg,
    handlers_reduce,
    handlers_shape,
)

__all__ = ["import_exported_program", "load_pt2", "export_module", "export_decoder", "export_decoder_onnx", "torch_dtype", "mapped_ops"]
