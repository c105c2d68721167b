"""The signature of a compiled module: its inputs and outputs, the assumptions it was compiled
under, the target it needs, and whether it checks its indices at run time.

The signature is embedded in the compiled library itself (a Relax function that returns it as
JSON), so the library is the single source of truth: a manifest edited to claim other inputs, a
laxer assumption or another CPU cannot make the runtime call the module with something it was
not built for. Parsing is strict: a malformed signature is an ``ArtifactError``, never a
``KeyError`` deep in the runtime. Nothing here imports torch or the compiler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..ir import DType, TensorType
from ..ir.errors import OptcError

SIGNATURE_FUNC = "optc_signature"
"""Name of the Relax function that returns the embedded signature (JSON text)."""


class ArtifactError(OptcError):
    """A missing, incomplete, corrupt or incompatible compiled artifact."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a compiled module: name, element type and shape (ints, symbolic
    dim names such as ``"seq"`` or products ``"batch*seq"``, None for unknown)."""

    name: str
    dtype: DType
    shape: tuple | None

    @property
    def type(self) -> TensorType:
        return TensorType(self.dtype, self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype.value, "shape": None if self.shape is None else list(self.shape)}

    @staticmethod
    def from_json(d: Any) -> "TensorSpec":
        _expect(isinstance(d, dict), "a tensor spec must be an object")
        name, dtype, shape = d.get("name"), d.get("dtype"), d.get("shape")
        _expect(isinstance(name, str) and name != "", "a tensor spec needs a name")
        _expect(isinstance(dtype, str), f"tensor {name!r}: dtype must be a string")
        try:
            dt = DType.parse(dtype)
        except ValueError:
            raise ArtifactError(f"tensor {name!r}: unknown dtype {dtype!r}") from None
        if shape is not None:
            _expect(isinstance(shape, list), f"tensor {name!r}: shape must be a list")
            for dim in shape:
                ok = dim is None or (isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0) or \
                    (isinstance(dim, str) and dim != "")
                _expect(ok, f"tensor {name!r}: bad dim {dim!r}")
            shape = tuple(shape)
        return TensorSpec(name, dt, shape)


@dataclass
class Signature:
    """What a caller must know to run a compiled module, and what it promises."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    assumptions: list[Any] = field(default_factory=list)  # codegen.lower.Assumption
    target: dict | None = None
    checked: bool = True
    # Further functions of the module (a decoder's "decode" step), each with its own inputs,
    # outputs and assumptions; the fields above describe "main".
    entries: dict[str, "Signature"] = field(default_factory=dict)
    kv_cache: dict | None = None  # a decoder's cache (ir/decoder.py KVCache.to_json())

    def to_json(self) -> dict:
        d = {"inputs": [s.to_json() for s in self.inputs], "outputs": [s.to_json() for s in self.outputs],
             "assumptions": [a.to_json() for a in self.assumptions], "target": self.target,
             "checked": self.checked}
        if self.entries:
            d["entries"] = {name: {k: v for k, v in sig.to_json().items() if k in _ENTRY_KEYS}
                            for name, sig in self.entries.items()}
        if self.kv_cache is not None:
            d["kv_cache"] = self.kv_cache
        return d

    def entry(self, name: str) -> "Signature":
        """The signature of function ``name`` (``"main"`` is this one)."""
        if name == "main":
            return self
        if name not in self.entries:
            raise ArtifactError(f"the compiled module has no function {name!r} (it has: "
                                f"{', '.join(['main', *self.entries])})")
        return self.entries[name]

    def check(self, inputs: Any) -> dict[str, int]:
        """Validate ``inputs`` (name -> array) as the reference interpreter does, plus the
        assumptions; returns the symbolic dim bindings. Every problem is a one-line ``OptcError``."""
        import numpy as np

        from ..ir.signature import check_inputs, numpy_dtype

        if not isinstance(inputs, dict) and not hasattr(inputs, "keys"):
            raise OptcError(f"inputs must be a mapping of input name to array, got {type(inputs).__name__}")
        bindings = check_inputs(self.inputs, inputs, "run", numpy_dtype, lambda a: np.shape(a))
        for a in self.assumptions:
            if a.holds(bindings) is False:
                given = ", ".join(f"{k}={v}" for k, v in sorted(bindings.items())) or "no symbolic dims"
                raise OptcError(f"inputs bind {given}, but the compiled model needs {a.describe()}")
        return bindings

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @staticmethod
    def from_json(d: Any) -> "Signature":
        from .lower import Assumption

        _expect(isinstance(d, dict), "the signature must be a JSON object")
        ins, outs = d.get("inputs"), d.get("outputs")
        _expect(isinstance(ins, list) and isinstance(outs, list), "inputs and outputs must be lists")
        assumptions = []
        _expect(isinstance(d.get("assumptions", []), list), "assumptions must be a list")
        for a in d.get("assumptions") or []:
            _expect(isinstance(a, dict) and set(a) == {"lhs", "op", "rhs", "why"}
                    and a["op"] in ("<=", ">=", "==") and isinstance(a["rhs"], int)
                    and isinstance(a["lhs"], (int, str)) and isinstance(a["why"], str), f"bad assumption {a!r}")
            assumptions.append(Assumption(**a))
        target = d.get("target")
        _expect(target is None or isinstance(target, dict), "target must be an object")
        if target is not None:
            feats = target.get("features", [])
            _expect(isinstance(feats, list) and all(isinstance(f, str) for f in feats),
                    "target features must be a list of strings")
        checked = d.get("checked", True)
        _expect(isinstance(checked, bool), "checked must be true or false")
        entries = d.get("entries", {})
        _expect(isinstance(entries, dict) and all(isinstance(k, str) and k and k != "main" and isinstance(v, dict)
                                                  and set(v) <= _ENTRY_KEYS for k, v in entries.items()),
                "entries must map function names to their inputs, outputs and assumptions")
        kv_cache = d.get("kv_cache")
        _expect(kv_cache is None or _is_kv_cache(kv_cache), "kv_cache must name pairs of past/present tensors "
                "and the seq and past dims")
        return Signature([TensorSpec.from_json(x) for x in ins], [TensorSpec.from_json(x) for x in outs],
                         assumptions, target, checked,
                         {k: Signature.from_json({**v, "target": target, "checked": checked}) for k, v in entries.items()},
                         kv_cache)

    @staticmethod
    def loads(text: str) -> "Signature":
        try:
            return Signature.from_json(json.loads(text))
        except ValueError as e:
            raise ArtifactError(f"the embedded signature is not valid JSON ({e})") from None


_ENTRY_KEYS = {"inputs", "outputs", "assumptions"}


def _is_kv_cache(d: Any) -> bool:
    return (isinstance(d, dict) and set(d) == {"pairs", "seq_dim", "past_dim"}
            and isinstance(d["seq_dim"], str) and isinstance(d["past_dim"], str) and isinstance(d["pairs"], list)
            and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in d["pairs"]))


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise ArtifactError(f"malformed signature: {msg}")
