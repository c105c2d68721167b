"""The IR's text form: ``print_graph`` and ``parse_graph`` (print → parse → print is byte-identical).

Example::

    # meta "producer" = "pytorch"
    graph main(%input_ids: i64[batch, seq], %x0: f32[batch, seq, 384]) {
      const %w0: f32[384, 384] = @w0
      const %axes: i64[1] = [-1]
      %x1: f32[batch, seq, 384] = MatMul(%x0, %w0) @node_name
      %a: f32[?, 12], %b: f32[?, 12] = Split(%x, none, %s) {axis=1} @split_0
      return %x1, %b
    }
    resources {
      @w0 = "AAAAAAAA..."
    }

Grammar (whitespace and ``#`` comments are free between tokens)::

    text      := meta* 'graph' graph ['resources' '{' ('@' NAME '=' STRING)* '}']
    graph     := NAME '(' [param (',' param)*] ')' ['captures' '(' [param (',' param)*] ')']
                 '{' stmt* 'return' [ref (',' ref)*] '}'
    meta      := '# meta' STRING '=' STRING                      (one per line, before 'graph')
    param     := '%' NAME ':' type
    stmt      := 'const' '%' NAME ':' type '=' (literal | '@' NAME | 'base64' STRING)
               | outs '=' OP '(' [input (',' input)*] ')' ['{' [attr (',' attr)*] '}'] ['@' NAME]
    outs      := '%' NAME [':' type] (',' '%' NAME [':' type])* | '(' ')'
    input     := '%' NAME | 'none'
    type      := DTYPE '[' ('*' | [dim (',' dim)*]) ']'         (f32[batch, 2*seq, ?], i64[], f16[*])
    dim       := INT | '?' | FACTOR ('*' FACTOR)* | STRING
    literal   := elem | '[' [elem (',' elem)*] ']'              (flat, row-major; elem: int, float,
                                                                 inf, -inf, nan, -nan, true, false)
    attr      := IDENT '=' (INT | FLOAT | STRING | DTYPE | '[' [value (',' value)*] ']'
                            | 'tensor' '(' type ',' (literal | 'base64' STRING) ')' | 'graph' graph)

A subgraph attribute (If branches, Loop/Scan bodies) prints as a nested ``graph``; its
``captures`` are the inputs bound to the node's trailing inputs (``ir/subgraph.py``). Its large
constants share the ``resources`` section (keyed ``node.attr/name`` when the name is taken)::

    %y: f32[2], %z: f32[3, 2] = Scan(%init, %x, %w) {body=graph body(%s: f32[2], %x_t: f32[2]) captures(%w: f32[2]) {
      %s2: f32[2] = Add(%s, %x_t) @add
      %z_t: f32[2] = Mul(%s2, %w) @mul
      return %s2, %z_t
    }, num_scan_inputs=1} @scan

Output types and node names may be left out of hand-written text (inferred / generated); the
printer always writes them, and parsed output types are exactly the printed ones.

``NAME`` is bare when it matches ``[A-Za-z0-9_.\\-:/]+`` (and does not end with ``:``), otherwise a
JSON string. Constants of at most 16 elements (bool/int: 64) print as literals whose floats
round-trip bit-exactly (shortest digits; a tensor whose NaN payloads do not survive prints as
``base64 "..."`` of its little-endian bytes). Larger constants print ``@name``: their data comes
from the ``weights`` dict given to ``parse_graph`` (``weights="elide"``) or from the trailing
``resources`` section (``weights="inline"``). Attributes equal to their schema default (or None)
are not printed; parsing fills them back in from the schema.
"""

from __future__ import annotations

import base64
import bisect
import json
import math
import re
import sys
from typing import Any

import numpy as np

from .errors import IRError
from .graph import Graph, Node, Value
from .schema import REQUIRED, AttrKind, get_schema
from .subgraph import subgraphs, walk
from .types import DType, TensorType, from_packed_bytes, to_packed_bytes

__all__ = ["print_graph", "parse_graph", "elided_weights", "is_inline_constant"]

INLINE_MAX = 16
INLINE_MAX_INT = 64

# -- printing -------------------------------------------------------------------------------------

_BARE_NAME = re.compile(r"[A-Za-z0-9_.\-:/]+")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_BARE_DIM = re.compile(rf"(?:-?[0-9]+|{_IDENT})(?:\*(?:-?[0-9]+|{_IDENT}))+|{_IDENT}")


def is_inline_constant(array: np.ndarray) -> bool:
    """Whether a constant prints as a literal (small) rather than by reference."""
    if array.size <= INLINE_MAX:
        return True
    try:
        dtype = DType.from_numpy(array.dtype)
    except TypeError:
        return False
    return not dtype.is_float and array.size <= INLINE_MAX_INT


def elided_weights(graph: Graph) -> dict[str, np.ndarray]:
    """The constants that ``print_graph(graph)`` prints as ``@name``, keyed as ``parse_graph``
    expects them in its ``weights`` argument (subgraph constants included)."""
    keys = _resource_keys(graph)
    return {keys[id(v)]: v.const for g in walk(graph) for v in g.constants.values() if id(v) in keys}


def _resource_keys(graph: Graph) -> dict[int, str]:
    """The ``@key`` of every large constant of ``graph`` and its subgraphs: the value name for the
    top graph; in a subgraph the name too unless taken, else ``node.attr/name`` (made unique)."""
    keys: dict[int, str] = {}
    used: set[str] = set()

    def visit(g: Graph, prefix: str) -> None:
        for v in g.constants.values():
            if is_inline_constant(v.const):
                continue
            key = v.name if v.name not in used else f"{prefix}{v.name}"
            k, n = key, 1
            while k in used:
                k, n = f"{key}#{n}", n + 1
            used.add(k)
            keys[id(v)] = k
        for node in g.nodes:
            for attr, body in subgraphs(node):
                visit(body, f"{prefix}{node.name}.{attr}/")

    visit(graph, "")
    return keys


def _name(name: str) -> str:
    if _BARE_NAME.fullmatch(name) and not name.endswith(":"):
        return name
    return json.dumps(name)


def _dim(d) -> str:
    if d is None:
        return "?"
    if isinstance(d, int):
        return str(d)
    return d if _BARE_DIM.fullmatch(d) else json.dumps(d)


def _type(t: TensorType) -> str:
    if t.shape is None:
        return f"{t.dtype.value}[*]"
    return f"{t.dtype.value}[{', '.join(_dim(d) for d in t.shape)}]"


def _float(x: float, dtype: DType) -> str:
    """Shortest decimal that reads back as the same value of ``dtype`` (x is exact in float64)."""
    if math.isnan(x):
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if dtype is DType.FLOAT64:
        s = repr(x)
    else:
        npdt = dtype.numpy
        with np.errstate(all="ignore"):  # digits that round past the largest finite value
            for p in range(1, 18):
                s = f"{x:.{p}g}"
                if float(np.array(float(s), dtype=npdt)) == x:
                    break
    if not any(c in s for c in ".en"):
        s += ".0"
    return s


def _elements(array: np.ndarray, dtype: DType) -> list[str]:
    flat = array.reshape(-1)
    if dtype is DType.BOOL:
        return ["true" if x else "false" for x in flat.tolist()]
    if dtype.is_float:
        with np.errstate(all="ignore"):  # casting NaN and inf is exact, numpy may still warn
            wide = flat.astype(np.float64).tolist()
        return [_float(x, dtype) for x in wide]
    return [str(int(x)) for x in flat.tolist()]


def _le_bytes(array: np.ndarray) -> bytes:
    """Little-endian bytes; sub-byte types packed as in ONNX ``raw_data`` (ir/types.py)."""
    return to_packed_bytes(array)


def _from_le_bytes(data: bytes, dtype: DType, shape) -> np.ndarray:
    return from_packed_bytes(data, dtype, shape)


def _literal(array: np.ndarray) -> str:
    """The literal of a tensor whose type is printed next to it."""
    dtype = DType.from_numpy(array.dtype)
    elems = _elements(array, dtype)
    # NaN payloads (and the like) that decimal text cannot carry fall back to raw bytes.
    if dtype.is_float:
        back = _build_array([_parse_elem_text(e) for e in elems], dtype, array.shape)
        if back.tobytes() != np.ascontiguousarray(array).tobytes():
            return f'base64 "{base64.b64encode(_le_bytes(array)).decode()}"'
    if array.ndim == 0:
        return elems[0]
    return "[" + ", ".join(elems) + "]"


def _attr_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and a.tobytes() == b.tobytes())
    if isinstance(a, float) and isinstance(b, float):
        return repr(a) == repr(b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_attr_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _attr_value(value: Any, kind: AttrKind | None, printer: "_Printer | None" = None, indent: str = "  ") -> str:
    if isinstance(value, Graph):
        if printer is None:
            raise IRError("cannot print a subgraph attribute outside print_graph")
        lines = printer.graph_lines(value, indent)
        return "\n".join([lines[0].lstrip()] + lines[1:])
    if isinstance(value, DType):
        return value.value
    if isinstance(value, np.ndarray):
        t = TensorType.of(value)
        return f"tensor({_type(t)}, {_literal(value)})"
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return _float(float(value), DType.FLOAT64)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bytes):
        return json.dumps(value.decode())
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_attr_value(v, None) for v in value) + "]"
    raise IRError(f"cannot print attribute value {value!r}")


def _attrs(node: Node, printer: "_Printer | None" = None, indent: str = "  ") -> str:
    schema = get_schema(node.op)
    specs = schema.attrs if schema is not None else {}
    keys = [k for k in specs if k in node.attrs] + [k for k in node.attrs if k not in specs]
    parts = []
    for key in keys:
        value = node.attrs[key]
        spec = specs.get(key)
        if value is None:
            continue
        if spec is not None and spec.default is not REQUIRED and _attr_equal(value, spec.default):
            continue
        parts.append(f"{key}={_attr_value(value, spec.kind if spec else None, printer, indent)}")
    return " {" + ", ".join(parts) + "}" if parts else ""


def print_graph(graph: Graph, weights: str = "elide") -> str:
    """The text form of ``graph``. ``weights="elide"`` prints large constants as ``@name`` only;
    ``weights="inline"`` adds a ``resources`` section with their bytes (self-contained text)."""
    if weights not in ("elide", "inline"):
        raise ValueError(f"weights must be 'elide' or 'inline', got {weights!r}")
    lines = []
    for k, v in graph.metadata.items():
        lines.append(f"# meta {json.dumps(str(k))} = {json.dumps(str(v))}")
    printer = _Printer(_resource_keys(graph))
    lines.extend(printer.graph_lines(graph, ""))
    if weights == "inline" and printer.resources:
        lines.append("resources {")
        for key, v in printer.resources:
            data = base64.b64encode(_le_bytes(v.const)).decode()
            lines.append(f'  @{_name(key)} = "{data}"')
        lines.append("}")
    return "\n".join(lines) + "\n"


class _Printer:
    """Prints a graph and, nested in node attributes, its subgraphs (``graph name(...)
    captures(...) { ... }``, indented one level deeper than the node)."""

    def __init__(self, keys: dict[int, str]):
        self.keys = keys
        self.resources: list[tuple[str, Value]] = []

    def graph_lines(self, graph: Graph, indent: str) -> list[str]:
        params = ", ".join(f"%{_name(v.name)}: {_type(v.type)}" for v in graph.params)
        head = f"{indent}graph {_name(graph.name)}({params})"
        if graph.num_captures:
            head += " captures(" + ", ".join(f"%{_name(v.name)}: {_type(v.type)}" for v in graph.captures) + ")"
        lines = [head + " {"]
        inner = indent + "  "
        for v in graph.constants.values():
            c = v.const
            if is_inline_constant(c):
                lines.append(f"{inner}const %{_name(v.name)}: {_type(v.type)} = {_literal(c)}")
            else:
                key = self.keys[id(v)]
                lines.append(f"{inner}const %{_name(v.name)}: {_type(v.type)} = @{_name(key)}")
                self.resources.append((key, v))
        for node in graph.nodes:
            if node.outputs:
                outs = ", ".join(f"%{_name(o.name)}: {_type(o.type)}" for o in node.outputs)
            else:
                outs = "()"
            ins = list(node._inputs)
            while ins and ins[-1] is None:
                ins.pop()
            args = ", ".join("none" if v is None else f"%{_name(v.name)}" for v in ins)
            lines.append(f"{inner}{outs} = {node.op}({args}){_attrs(node, self, inner)} @{_name(node.name)}")
        ret = ", ".join(f"%{_name(v.name)}" for v in graph.outputs)
        lines.append(f"{inner}return {ret}" if ret else f"{inner}return")
        lines.append(f"{indent}}}")
        return lines


# -- parsing --------------------------------------------------------------------------------------

_WS = re.compile(r"(?:\s+|#[^\n]*)*")
_SPACES = re.compile(r"\s*")
_NAME_RE = re.compile(r"(?:[A-Za-z0-9_.\-/]|:(?=[A-Za-z0-9_.\-/:]))+")
_STRING_RE = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_IDENT_RE = re.compile(_IDENT)
_OP_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_FACTOR_RE = re.compile(rf"-?[0-9]+|{_IDENT}")
_NUMBER_RE = re.compile(
    r"-?(?:(?:[0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)(?:[eE][-+]?[0-9]+)?|inf(?![A-Za-z0-9_])|nan(?![A-Za-z0-9_]))")
_INT_TEXT = re.compile(r"-?[0-9]+")
_META_RE = re.compile(r"#[ \t]*meta[ \t]")


def _parse_elem_text(s: str):
    """An element literal's Python value (bool, int or float)."""
    if s == "true":
        return True
    if s == "false":
        return False
    if _INT_TEXT.fullmatch(s):
        return int(s)
    return float(s)


def _build_array(values: list, dtype: DType, shape) -> np.ndarray:
    npdt = dtype.numpy
    if dtype.is_float:
        with np.errstate(all="ignore"):  # inf and NaN elements cast exactly
            wide = np.array([float(v) for v in values], dtype=np.float64)
            arr = wide.astype(npdt)
            if dtype.is_low_precision:  # ml_dtypes turns an out-of-range literal into NaN/inf
                bad = np.isfinite(wide) & ~np.isfinite(arr.astype(np.float64))
                if bad.any():
                    raise ValueError(f"{float(wide[bad][0])!r} is out of range for {dtype.value}")
    elif dtype.is_packed:  # ml_dtypes wraps sub-byte integers silently
        import ml_dtypes

        info = ml_dtypes.iinfo(npdt)
        for v in values:
            if not int(info.min) <= v <= int(info.max):
                raise OverflowError(f"Python integer {v} out of bounds for {dtype.value}")
        arr = np.array(values, dtype=np.int64).astype(npdt)
    else:
        arr = np.array(values, dtype=npdt)
    return arr.reshape(shape)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.line_starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    # -- scanning ---------------------------------------------------------------------------------
    def where(self, offset: int | None = None) -> str:
        offset = self.pos if offset is None else offset
        line = bisect.bisect_right(self.line_starts, offset) - 1
        return f"{line + 1}:{offset - self.line_starts[line] + 1}"

    def found(self) -> str:
        if self.pos >= len(self.text):
            return "end of input"
        m = re.compile(r"[A-Za-z0-9_.]+|\S").match(self.text, self.pos)
        return repr(m.group()) if m else repr(self.text[self.pos])

    def error(self, expected: str, offset: int | None = None) -> IRError:
        if offset is not None:
            self.pos = offset
        return IRError(f"parse error at {self.where()}: expected {expected}, found {self.found()}")

    def fail(self, offset: int, msg: str) -> IRError:
        return IRError(f"{self.where(offset)}: {msg}")

    def ws(self) -> None:
        self.pos = _WS.match(self.text, self.pos).end()

    def peek(self, s: str) -> bool:
        self.ws()
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str, what: str | None = None) -> None:
        if not self.accept(s):
            raise self.error(what or repr(s))

    def match(self, regex: re.Pattern) -> str | None:
        self.ws()
        m = regex.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group()

    def keyword(self, word: str) -> bool:
        self.ws()
        m = _IDENT_RE.match(self.text, self.pos)
        if m and m.group() == word:
            self.pos = m.end()
            return True
        return False

    def string(self, what: str = "a string") -> str:
        s = self.match(_STRING_RE)
        if s is None:
            raise self.error(what)
        return json.loads(s)

    def raw_name(self, what: str) -> str:
        """A bare or quoted name right after the current position (no whitespace skipped)."""
        if self.text.startswith('"', self.pos):
            m = _STRING_RE.match(self.text, self.pos)
            if m is None:
                raise self.error(f"{what} (a well-formed JSON string)")
            self.pos = m.end()
            return json.loads(m.group())
        m = _NAME_RE.match(self.text, self.pos)
        if m is None:
            raise self.error(what)
        self.pos = m.end()
        return m.group()

    def sigil_name(self, sigil: str, what: str, expected: str | None = None) -> tuple[str, int]:
        self.ws()
        start = self.pos
        if not self.text.startswith(sigil, self.pos):
            raise self.error(expected or f"'{sigil}' and {what}")
        self.pos += 1
        return self.raw_name(what), start

    # -- grammar ----------------------------------------------------------------------------------
    def dtype(self) -> DType:
        self.ws()
        start = self.pos
        word = self.match(_IDENT_RE)
        if word is None:
            raise self.error("an element type (f32, i64, ...)")
        try:
            return DType.parse(word)
        except ValueError:
            raise self.error("an element type (f32, f16, bf16, f64, i8..i64, u8..u64, bool, f8e4m3fn, f8e4m3fnuz, "
                             "f8e5m2, f8e5m2fnuz, f8e8m0, f4e2m1, i4, u4, i2, u2)", start) from None

    def dim(self):
        if self.accept("?"):
            return None
        if self.peek('"'):
            return self.string()
        parts = []
        while True:
            f = self.match(_FACTOR_RE)
            if f is None:
                raise self.error("a dimension (an integer, a symbol, '?' or a string)")
            parts.append(f)
            if not self.accept("*"):
                break
        if len(parts) == 1 and _INT_TEXT.fullmatch(parts[0]):
            return int(parts[0])
        return "*".join(parts)

    def type(self) -> TensorType:
        dt = self.dtype()
        self.expect("[", "'[' after the element type")
        if self.accept("*"):
            self.expect("]", "']' after '*'")
            return TensorType(dt, None)
        dims = []
        if not self.accept("]"):
            while True:
                dims.append(self.dim())
                if self.accept("]"):
                    break
                self.expect(",", "',' or ']' in the shape")
        return TensorType(dt, tuple(dims))

    def elem(self):
        self.ws()
        for word, val in (("true", True), ("false", False)):
            if self.keyword(word):
                return val
        s = self.match(_NUMBER_RE)
        if s is None:
            raise self.error("a number, inf, nan, true or false")
        return _parse_elem_text(s)

    def tensor_value(self, t: TensorType) -> np.ndarray:
        """A literal or ``base64 "..."`` of type ``t``."""
        self.ws()
        start = self.pos
        if t.shape is None or not t.is_static:
            raise self.fail(start, f"a constant needs a static shape, got {_type(t)}")
        if self.keyword("base64"):
            data, _ = self.b64_string()
            return self._from_bytes(data, t, start)
        if self.accept("["):
            values = []
            if not self.accept("]"):
                while True:
                    values.append(self.elem())
                    if self.accept("]"):
                        break
                    self.expect(",", "',' or ']' in the literal")
        else:
            values = [self.elem()]
        return self._array(values, t, start)

    def b64_string(self) -> tuple[bytes, int]:
        """A quoted base64 string (large: found with str.find, not the JSON-string regex)."""
        self.ws()
        start = self.pos
        if not self.text.startswith('"', start):
            raise self.error("a quoted base64 string")
        end = self.text.find('"', start + 1)
        if end < 0:
            raise self.error("a quoted base64 string (no closing quote)")
        self.pos = end + 1
        return self._b64(self.text[start + 1:end], start), start

    def _b64(self, s: str, start: int) -> bytes:
        try:
            return base64.b64decode(s, validate=True)
        except (ValueError, UnicodeEncodeError):
            raise self.fail(start, "invalid base64 data") from None

    def _from_bytes(self, data: bytes, t: TensorType, start: int) -> np.ndarray:
        want = t.dtype.nbytes(t.numel)
        if len(data) != want:
            raise self.fail(start, f"{_type(t)} needs {want} bytes, got {len(data)}")
        return _from_le_bytes(data, t.dtype, t.shape)

    def _array(self, values: list, t: TensorType, start: int) -> np.ndarray:
        if len(values) != t.numel:
            raise self.fail(start, f"{_type(t)} needs {t.numel} elements, got {len(values)}")
        dt = t.dtype
        for v in values:
            ok = (isinstance(v, bool) if dt is DType.BOOL
                  else (isinstance(v, (int, float)) and not isinstance(v, bool)) if dt.is_float
                  else isinstance(v, int) and not isinstance(v, bool))
            if not ok:
                raise self.fail(start, f"element {v!r} does not fit element type {dt.value}")
        try:
            return _build_array(values, dt, t.shape)
        except (OverflowError, ValueError) as e:
            raise self.fail(start, f"bad literal for {_type(t)}: {e}") from None

    def attr_value(self):
        self.ws()
        start = self.pos
        if self.peek('"'):
            return self.string()
        if self.accept("["):
            items = []
            if not self.accept("]"):
                while True:
                    items.append(self.attr_value())
                    if self.accept("]"):
                        break
                    self.expect(",", "',' or ']' in the list")
            return items
        if self.keyword("graph"):
            return self.graph_syntax()
        if self.keyword("tensor"):
            self.expect("(", "'(' after 'tensor'")
            t = self.type()
            self.expect(",", "',' after the tensor type")
            arr = self.tensor_value(t)
            self.expect(")", "')' after the tensor literal")
            return arr
        s = self.match(_NUMBER_RE)
        if s is not None:
            return _parse_elem_text(s)
        word = self.match(_IDENT_RE)
        if word is not None:
            try:
                return DType.parse(word)
            except ValueError:
                pass
        raise self.error("an attribute value (number, string, list, element type, tensor(...) or graph)", start)

    def value_ref(self, values: dict[str, Value]) -> Value:
        name, start = self.sigil_name("%", "a value name")
        v = values.get(name)
        if v is None:
            raise self.fail(start, f"undefined value %{_name(name)}")
        return v

    # -- top level --------------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        while True:
            self.pos = _SPACES.match(self.text, self.pos).end()
            if not self.text.startswith("#", self.pos):
                return meta
            end = self.text.find("\n", self.pos)
            end = len(self.text) if end < 0 else end
            m = _META_RE.match(self.text, self.pos)
            if m is None or m.end() > end:
                self.pos = end  # an ordinary comment
                continue
            self.pos = m.end()
            key = self._meta_string(end)
            self.pos = _SPACES.match(self.text, self.pos).end()
            if self.pos >= end or self.text[self.pos] != "=":
                raise self.error("'=' in the metadata line")
            self.pos += 1
            value = self._meta_string(end)
            self.pos = re.compile(r"[ \t\r]*").match(self.text, self.pos).end()
            if self.pos < end:
                raise self.error("end of the metadata line")
            meta[key] = value

    def _meta_string(self, end: int) -> str:
        self.pos = re.compile(r"[ \t]*").match(self.text, self.pos).end()
        m = _STRING_RE.match(self.text, self.pos)
        if m is None or m.end() > end:
            raise self.error("a JSON string in the metadata line")
        self.pos = m.end()
        return json.loads(m.group())

    def parse(self, weights: dict[str, np.ndarray] | None) -> Graph:
        meta = self.metadata()
        if not self.keyword("graph"):
            raise self.error("'graph'")
        # Statements are collected first: large constants (of the graph and of its subgraphs) may
        # get their bytes from the resources section at the end of the text, and the graphs are
        # built once they are all known.
        self.pending: dict[str, tuple[TensorType, int]] = {}  # resource key -> (type, offset)
        syntax = self.graph_syntax()

        resources: dict[str, bytes] = {}
        res_pos: dict[str, int] = {}
        if self.keyword("resources"):
            self.expect("{", "'{' after 'resources'")
            while not self.accept("}"):
                key, s = self.sigil_name("@", "a resource name", "'@name = \"...\"' or '}'")
                self.expect("=", "'=' and the resource's base64 data")
                if key in resources:
                    raise self.fail(s, f"resource @{_name(key)} is given twice")
                resources[key], res_pos[key] = self.b64_string()
        self.ws()
        if self.pos < len(self.text):
            raise self.error("end of input")

        # -- build ------------------------------------------------------------------------------
        arrays: dict[str, np.ndarray] = {}
        for key, (t, vstart) in self.pending.items():
            if key in resources:
                arrays[key] = self._from_bytes(resources[key], t, res_pos[key])
                continue
            if weights is None or key not in weights:
                hint = "no weights were given" if weights is None else "it is not in the weights dict"
                raise self.fail(vstart, f"no data for constant @{_name(key)}: {hint} and the text has "
                                        "no resources entry for it (print with weights='inline' for "
                                        "self-contained text)")
            arr = np.asarray(weights[key])
            try:
                got = TensorType.of(arr)
            except TypeError as e:
                raise self.fail(vstart, f"weight @{_name(key)}: {e}") from None
            if got != t:
                raise self.fail(vstart, f"weight @{_name(key)} is {_type(got)}, the text declares {_type(t)}")
            arrays[key] = arr
        self.arrays = arrays
        g = self.build_graph(syntax)
        g.metadata = meta
        return g

    def graph_syntax(self) -> "_GraphSyntax":
        """What follows the keyword ``graph``: name, inputs, captures and the statements."""
        self.ws()
        gname = self.raw_name("the graph name")
        names: set[str] = set()

        def params(what: str) -> list[tuple[str, TensorType, int]]:
            out = []
            if not self.accept(")"):
                while True:
                    name, start = self.sigil_name("%", f"an {what} name")
                    if name in names:
                        raise self.fail(start, f"value %{_name(name)} is already defined")
                    names.add(name)
                    self.expect(":", f"':' and the {what}'s type")
                    out.append((name, self.type(), start))
                    if self.accept(")"):
                        break
                    self.expect(",", f"',' or ')' after a graph {what}")
            return out

        self.expect("(", "'(' after the graph name")
        inputs = params("input")
        captures = []
        if self.keyword("captures"):
            self.expect("(", "'(' after 'captures'")
            captures = params("capture")
        self.expect("{", "'{' to open the graph body")

        stmts: list[tuple] = []
        while True:
            self.ws()
            start = self.pos
            if self.keyword("return"):
                outs = []
                if not self.peek("}"):
                    while True:
                        name, s = self.sigil_name("%", "an output name")
                        outs.append((name, s))
                        if not self.accept(","):
                            break
                self.expect("}", "'}' after the return statement")
                stmts.append(("return", start, outs))
                break
            if self.keyword("const"):
                name, s = self.sigil_name("%", "a constant name")
                self.expect(":", "':' and the constant's type")
                t = self.type()
                self.expect("=", "'=' and the constant's value")
                self.ws()
                vstart = self.pos
                if self.text.startswith("@", self.pos):
                    key, _ = self.sigil_name("@", "a weight name")
                    if t.shape is None or not t.is_static:
                        raise self.fail(vstart, f"a constant needs a static shape, got {_type(t)}")
                    self.pending.setdefault(key, (t, vstart))
                    stmts.append(("const", s, name, t, None, key, vstart))
                else:
                    stmts.append(("const", s, name, t, self.tensor_value(t), None, vstart))
                continue
            if self.peek("%") or self.peek("("):
                stmts.append(self.node_stmt())
                continue
            raise self.error("a statement ('const', '%name = Op(...)' or 'return')")
        return _GraphSyntax(gname, inputs, captures, stmts)

    def build_graph(self, syntax: "_GraphSyntax") -> Graph:
        g = Graph(syntax.name)
        values: dict[str, Value] = {}

        def define(name: str, start: int) -> None:
            if name in values:
                raise self.fail(start, f"value %{_name(name)} is already defined")

        for name, t, start in syntax.inputs:
            define(name, start)
            values[name] = g.add_input(name, t)
        for name, t, start in syntax.captures:
            define(name, start)
            values[name] = g.add_capture(name, t)
        for st in syntax.stmts:
            kind = st[0]
            if kind == "const":
                _, s, name, t, arr, key, vstart = st
                define(name, s)
                if arr is None:
                    arr = self.arrays[key]
                if TensorType.of(arr) != t:
                    raise self.fail(vstart, f"constant value is {_type(TensorType.of(arr))}, declared {_type(t)}")
                values[name] = g.add_constant(arr, name)
            elif kind == "node":
                self.build_node(g, values, st, define)
            else:
                _, s, outs = st
                res = []
                for name, ns in outs:
                    v = values.get(name)
                    if v is None:
                        raise self.fail(ns, f"undefined value %{_name(name)}")
                    res.append(v)
                g.set_outputs(res)
        return g

    def node_stmt(self) -> tuple:
        self.ws()
        start = self.pos
        outs: list[tuple[str, TensorType | None, int]] = []
        if self.accept("("):
            self.expect(")", "')' (a node without outputs is written '() = Op(...)')")
        else:
            while True:
                name, s = self.sigil_name("%", "an output name")
                t = self.type() if self.accept(":") else None
                outs.append((name, t, s))
                if not self.accept(","):
                    break
        self.expect("=", "'=' after the node's outputs")
        self.ws()
        op_start = self.pos
        op = self.match(_OP_RE)
        if op is None:
            raise self.error("an op name")
        self.expect("(", f"'(' after {op}")
        ins: list[tuple[str | None, int]] = []
        if not self.accept(")"):
            while True:
                self.ws()
                if self.keyword("none"):
                    ins.append((None, self.pos))
                else:
                    ins.append(self.sigil_name("%", "a value name", "an input ('%name' or 'none')"))
                if self.accept(")"):
                    break
                self.expect(",", "',' or ')' after a node input")
        attrs: dict[str, tuple[Any, int]] = {}
        if self.accept("{"):
            if not self.accept("}"):
                while True:
                    self.ws()
                    a_start = self.pos
                    key = self.match(_IDENT_RE)
                    if key is None:
                        raise self.error("an attribute name")
                    if key in attrs:
                        raise self.fail(a_start, f"attribute {key!r} given twice")
                    self.expect("=", f"'=' after attribute {key!r}")
                    self.ws()
                    v_start = self.pos
                    attrs[key] = (self.attr_value(), a_start, v_start)
                    if self.accept("}"):
                        break
                    self.expect(",", "',' or '}' after an attribute")
        node_name = None
        self.ws()
        if self.text.startswith("@", self.pos):
            node_name, _ = self.sigil_name("@", "a node name")
        return ("node", start, op_start, outs, op, ins, attrs, node_name)

    def build_node(self, g: Graph, values: dict[str, Value], st: tuple, define) -> None:
        _, start, op_start, outs, op, ins, attrs, node_name = st
        schema = get_schema(op)
        if schema is None:
            raise self.fail(op_start, f"unknown op {op!r}")
        inputs = []
        for name, s in ins:
            if name is None:
                inputs.append(None)
                continue
            v = values.get(name)
            if v is None:
                raise self.fail(s, f"undefined value %{_name(name)} (values must be defined before use)")
            inputs.append(v)
        typed = {}
        for key, (value, a_start, v_start) in attrs.items():
            spec = schema.attrs.get(key)
            if spec is None:
                known = ", ".join(schema.attrs) or "none"
                raise self.fail(a_start, f"{op} has no attribute {key!r} (its attributes: {known})")
            where = f"attribute {key!r} of {op}"
            if isinstance(value, _GraphSyntax):
                if spec.kind is not AttrKind.GRAPH:
                    raise self.fail(v_start, f"{where}: expected {spec.kind.value}, got a graph")
                value = self.build_graph(value)
            typed[key] = _check_attr(spec.kind, value, lambda msg, at=v_start, w=where: self.fail(at, f"{w}: {msg}"))
        for name, _, s in outs:
            define(name, s)
        if node_name is not None and node_name in g._node_names:
            raise self.fail(start, f"node name @{_name(node_name)} is already used")
        try:
            node = g.add_node(op, inputs, typed, name=node_name, output_names=[o[0] for o in outs],
                              output_types=[o[1] for o in outs])
        except IRError as e:
            raise self.fail(start, str(e)) from None
        for out, (name, t, _) in zip(node.outputs, outs):
            if t is not None:
                out.type = t  # exactly as printed (inference may know more; both are compatible)
            values[name] = out


class _GraphSyntax:
    """A parsed, not yet built graph (built once the resources section is known)."""

    def __init__(self, name: str, inputs: list, captures: list, stmts: list):
        self.name = name
        self.inputs = inputs
        self.captures = captures
        self.stmts = stmts


def _check_attr(kind: AttrKind, value: Any, fail) -> Any:
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    ok = {
        AttrKind.INT: lambda v: is_int(v),
        AttrKind.FLOAT: lambda v: is_num(v),
        AttrKind.STRING: lambda v: isinstance(v, str),
        AttrKind.INTS: lambda v: isinstance(v, list) and all(is_int(x) for x in v),
        AttrKind.FLOATS: lambda v: isinstance(v, list) and all(is_num(x) for x in v),
        AttrKind.STRINGS: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        AttrKind.DTYPE: lambda v: isinstance(v, DType),
        AttrKind.TENSOR: lambda v: isinstance(v, np.ndarray),
        AttrKind.GRAPH: lambda v: isinstance(v, Graph),
    }[kind]
    if not ok(value):
        raise fail(f"expected {kind.value}, got {value!r}")
    if kind is AttrKind.FLOAT:
        return float(value)
    if kind in (AttrKind.INTS, AttrKind.STRINGS):
        return tuple(value)
    if kind is AttrKind.FLOATS:
        return tuple(float(x) for x in value)
    return value


def parse_graph(text: str, weights: dict[str, np.ndarray] | None = None) -> Graph:
    """Parse the text form back into a graph (nodes are rebuilt through ``Graph.add_node``, so
    types are inferred and checked against the printed ones). Large constants printed as
    ``@name`` take their data from the text's ``resources`` section or from ``weights[name]``."""
    return _Parser(text).parse(weights)
