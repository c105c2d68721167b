"""The op catalog. Importing this package registers every op family's schema."""

from . import elementwise, nn, reduce, shape  # noqa: F401
from . import activation, image, loss, sequence, signal  # noqa: F401  (ONNX loss / image / sequence / signal ops)
from . import control_flow, recurrent  # noqa: F401  (If / Loop / Scan; RNN / GRU / LSTM)
from . import quant  # noqa: F401  (QuantizeLinear / DequantizeLinear / QLinear* / *Integer / BitCast)
from . import qlinear  # noqa: F401  (QLinear: optc's low-precision dense layer)
