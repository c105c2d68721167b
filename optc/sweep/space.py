"""The search space of ``optc sweep``: pass options and the values to try, read from TOML.

    base = "default"                  # the pipeline every point starts with (default: default)

    [passes.prune-heads]
    ratio = ["off", 0.25, 0.4, 0.5]    # a list: the values to try; "off" leaves the pass out
    [passes.prune-ffn]
    ratio = { low = 0.1, high = 0.3, step = 0.1 }   # a range: low..high in steps (both ends in)
    [passes.quantize]
    precision = ["off", "int8"]
    [passes.distill]                   # no options (or only fixed ones): always in the pipeline
    steps = 200                        # a single value: fixed

Passes run in the order the file lists them, after ``base``. A point is one value per varied
option; its pipeline text is what ``optc compile --passes`` rebuilds it from. Every value is
checked against the pass's options when the file is read (an unknown pass or option, a value
of the wrong type, an empty range: one line naming it).
"""

from __future__ import annotations

import itertools
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OptcError

__all__ = ["OFF", "Space", "SpaceError", "load_space", "parse_space"]

OFF = "off"


class SpaceError(OptcError):
    """A sweep space file that cannot be used (one line naming the pass and option)."""


@dataclass
class PassSpace:
    name: str
    fixed: dict[str, Any] = field(default_factory=dict)
    varied: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class Space:
    base: str
    passes: list[PassSpace]

    def dimensions(self) -> dict[str, list[Any]]:
        """``"pass.option" -> values``, in file order: what a point chooses."""
        return {f"{p.name}.{k}": v for p in self.passes for k, v in p.varied.items()}

    def size(self) -> int:
        return math.prod(len(v) for v in self.dimensions().values())

    def grid(self) -> list[dict[str, Any]]:
        dims = self.dimensions()
        return [dict(zip(dims, combo)) for combo in itertools.product(*dims.values())]

    def base_pipeline(self) -> str:
        """The canonical text of ``base`` alone: the uncompressed reference point."""
        from ..passes.pipeline import format_pipeline, parse_pipeline

        return format_pipeline(parse_pipeline(self.base)) if self.base else ""

    def pipeline(self, point: dict[str, Any]) -> str:
        """The canonical pipeline text of a point (the parser's own formatting)."""
        from ..passes.pipeline import format_pipeline, parse_pipeline

        items = [self.base] if self.base else []
        for p in self.passes:
            opts = dict(p.fixed)
            off = False
            for k in p.varied:
                v = point[f"{p.name}.{k}"]
                if v == OFF:
                    off = True
                opts[k] = v
            if off:
                continue
            items.append(p.name + ("{" + ",".join(f"{k}={_text(v)}" for k, v in opts.items()) + "}" if opts else ""))
        return format_pipeline(parse_pipeline(",".join(items)))


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(round(v, 10))
    return str(v)


def _values(pass_name: str, key: str, spec: Any) -> list[Any] | None:
    """The values of one option (``None``: a fixed value)."""
    where = f"passes.{pass_name}.{key}"
    if isinstance(spec, list):
        if not spec:
            raise SpaceError(f"space: {where} is an empty list of values")
        return list(dict.fromkeys(spec))  # duplicates removed, order kept
    if isinstance(spec, dict):
        unknown = set(spec) - {"low", "high", "step"}
        if unknown or not {"low", "high", "step"} <= set(spec):
            raise SpaceError(f"space: {where} must be a list of values or {{ low = .., high = .., step = .. }}")
        lo, hi, step = spec["low"], spec["high"], spec["step"]
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (lo, hi, step)) or step <= 0:
            raise SpaceError(f"space: {where} needs numbers low <= high and step > 0")
        if lo > hi:
            raise SpaceError(f"space: {where} is an empty range ({lo} > {hi})")
        n = int(math.floor((hi - lo) / step + 1e-9)) + 1
        integral = all(isinstance(x, int) for x in (lo, hi, step))
        return [lo + i * step if integral else round(lo + i * step, 10) for i in range(n)]
    return None


def parse_space(data: dict, source: str = "space") -> Space:
    from ..passes.base import PassError
    from ..passes.pipeline import parse_pass, parse_pipeline

    unknown = set(data) - {"base", "passes"}
    if unknown:
        raise SpaceError(f"{source}: unknown key(s) {', '.join(sorted(unknown))} (expected base and [passes.NAME] tables)")
    base = data.get("base", "default")
    if not isinstance(base, str):
        raise SpaceError(f"{source}: base must be a pipeline string")
    try:
        parse_pipeline(base) if base else None
    except PassError as e:
        raise SpaceError(f"{source}: base: {e}") from None
    tables = data.get("passes", {})
    if not isinstance(tables, dict) or not tables:
        raise SpaceError(f"{source}: no [passes.NAME] tables: nothing to sweep")
    passes = []
    for name, opts in tables.items():
        if not isinstance(opts, dict):
            raise SpaceError(f"{source}: passes.{name} must be a table of options")
        ps = PassSpace(name)
        for key, spec in opts.items():
            values = _values(name, key, spec)
            if values is None:
                ps.fixed[key] = spec
            else:
                ps.varied[key] = values
        # every value, checked by the pipeline parser against the pass's options
        try:
            parse_pass(name)
            for key, value in ps.fixed.items():
                parse_pass(f"{name}{{{key}={_text(value)}}}")
            for key, values in ps.varied.items():
                for value in values:
                    if value != OFF:
                        parse_pass(f"{name}{{{key}={_text(value)}}}")
        except PassError as e:
            raise SpaceError(f"{source}: passes.{name}: {e}") from None
        passes.append(ps)
    space = Space(base, passes)
    if not space.dimensions():
        raise SpaceError(f"{source}: no option has more than one value: nothing to sweep")
    return space


def load_space(path: str | Path) -> Space:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpaceError(f"space file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"cannot read space file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"space file {path} is not valid TOML: {e}") from None
    return parse_space(data, str(path))
