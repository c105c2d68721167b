"""What a pass is: a small dataclass with a ``name``, typed options as fields, a ``lossy`` flag
and ``run(graph, ctx) -> PassResult``; and the registry of every pass.

    @register_pass
    @dataclass
    class PruneHeads(Pass):
        \"\"\"Remove the least important attention heads.\"\"\"
        name: ClassVar[str] = "prune-heads"
        lossy: ClassVar[bool] = True
        ratio: float = option(0.25, "fraction of heads to remove")

        def run(self, graph, ctx): ...

Options are ``int``, ``float``, ``bool`` or ``str`` fields; the pipeline text
(``prune-heads{ratio=0.25}``) is parsed against those types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..ir.errors import OptcError
from ..ir.graph import Graph

if TYPE_CHECKING:
    from .context import PassContext

OPTION_TYPES = (int, float, bool, str)


class PassError(OptcError):
    """A pipeline that cannot be parsed, or a pass (or an instrument after it) that failed."""


def option(default: Any, doc: str = "") -> Any:
    """A pass option: a dataclass field with a default and a one-line description."""
    return field(default=default, metadata={"doc": doc})


@dataclass
class PassResult:
    """What one pass did: whether it changed the graph, and a report of counts.

    ``report`` holds the pass's own counts (``{"folded": 3}``); the manager adds the pass name,
    its options, node counts before/after and the time it took (see ``PassManager``)."""

    changed: bool
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # set by the manager: the pass's own run time, without instruments


@dataclass
class Pass:
    """Base class of every pass. Subclasses are dataclasses whose fields are the options."""

    name: ClassVar[str] = ""
    lossy: ClassVar[bool] = False
    uses_teacher: ClassVar[bool] = False
    """Whether the pass reads ``ctx.teacher`` (the graph before the pipeline's first lossy pass),
    which the manager then keeps."""

    def run(self, graph: Graph, ctx: "PassContext") -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- options ---------------------------------------------------------------------------
    @classmethod
    def option_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.init]

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.option_fields()}

    def non_default_options(self) -> dict[str, Any]:
        out = {}
        for f in self.option_fields():
            v = getattr(self, f.name)
            if f.default is dataclasses.MISSING or v != f.default:
                out[f.name] = v
        return out

    def error_budget(self, ctx: "PassContext") -> float | None:
        """For lossy passes: the relative output error this pass may introduce (checked by the
        numeric instrument). The context's ``budgets[name]`` wins; else None (unchecked)."""
        b = ctx.budgets.get(self.name)
        return None if b is None else float(b)

    def __str__(self) -> str:
        from .pipeline import format_pass

        return format_pass(self)


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: add a pass to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass {cls.name!r} registered twice")
    for f in cls.option_fields():
        if _option_type(cls, f) not in OPTION_TYPES:
            raise ValueError(f"pass {cls.name}: option {f.name} must be int, float, bool or str")
        if f.default is dataclasses.MISSING:
            raise ValueError(f"pass {cls.name}: option {f.name} needs a default")
    _REGISTRY[cls.name] = cls
    return cls


def _option_type(cls: type, f: dataclasses.Field) -> type:
    t = f.type
    if isinstance(t, str):  # `from __future__ import annotations`
        t = {"int": int, "float": float, "bool": bool, "str": str}.get(t, t)
    return t


def option_type(cls: type[Pass], name: str) -> type:
    for f in cls.option_fields():
        if f.name == name:
            return _option_type(cls, f)
    raise KeyError(name)


def registered_passes() -> dict[str, type[Pass]]:
    """Every registered pass by name (importing ``optc.passes`` registers the built-in ones)."""
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass] | None:
    return _REGISTRY.get(name)


def pass_info() -> list[dict[str, Any]]:
    """The registry as data: name, lossy, doc and options (name, type, default, doc)."""
    out = []
    for name, cls in registered_passes().items():
        out.append({
            "name": name,
            "lossy": cls.lossy,
            "doc": " ".join((cls.__doc__ or "").split()),
            "options": [{"name": f.name, "type": _option_type(cls, f).__name__, "default": f.default,
                         "doc": f.metadata.get("doc", "")} for f in cls.option_fields()],
        })
    return out
