"""Pipeline text: ``fold-constants,dce,cse`` with options in braces, ``prune-heads{ratio=0.25}``.

``default`` stands for the default (exact) pipeline anywhere in the list. Parsing then printing
gives the expanded, canonical text (options at their defaults are left out), and printing then
parsing gives back equal pass objects.
"""

from __future__ import annotations

import re
from typing import Any

from .base import Pass, PassError, get_pass, option_type, registered_passes

# The cleanup passes, and the default pipeline: exact passes only (no lossy pass runs unless
# asked for): cleanup, then every fusion, then the dead code fusion leaves behind.
CLEANUP_PIPELINE = "fold-shapes,fold-constants,simplify,cse,tie-weights,dce"
DEFAULT_PIPELINE = CLEANUP_PIPELINE + ",fuse,dce"

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def default_pipeline_text() -> str:
    return DEFAULT_PIPELINE


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside braces."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "{":
            depth += 1
            if depth > 1:
                raise PassError(f"pipeline {text!r}: nested braces")
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise PassError(f"pipeline {text!r}: unbalanced '}}'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise PassError(f"pipeline {text!r}: unbalanced '{{'")
    parts.append("".join(cur))
    return parts


def _choices() -> str:
    return ", ".join(["default", *registered_passes()])


def parse_value(pass_name: str, key: str, typ: type, text: str) -> Any:
    t = text.strip()
    try:
        if typ is bool:
            low = t.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(t, 0)
        if typ is float:
            return float(t)
        if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
            return t[1:-1]
        return t
    except ValueError:
        hint = " (true or false)" if typ is bool else ""
        raise PassError(f"pass {pass_name}: option {key} expects {typ.__name__}{hint}, got {t!r}") from None


def parse_pass(item: str) -> Pass:
    item = item.strip()
    m = _NAME.match(item)
    if not m:
        raise PassError(f"bad pipeline item {item!r}; valid passes: {_choices()}")
    name, rest = m.group(0), item[m.end():].strip()
    cls = get_pass(name)
    if cls is None:
        raise PassError(f"unknown pass {name!r}; valid passes: {_choices()}")
    opts: dict[str, Any] = {}
    if rest:
        if not (rest.startswith("{") and rest.endswith("}")):
            raise PassError(f"pass {name}: expected options in braces after the name, got {rest!r}")
        body = rest[1:-1].strip()
        valid = [f.name for f in cls.option_fields()]
        for kv in filter(None, (s.strip() for s in body.split(","))) if body else []:
            key, sep, val = kv.partition("=")
            key = key.strip()
            if key not in valid:
                listed = ", ".join(valid) if valid else "none"
                raise PassError(f"pass {name}: unknown option {key!r}; valid options: {listed}")
            if not sep:
                raise PassError(f"pass {name}: option {key} needs a value ({key}=...)")
            if key in opts:
                raise PassError(f"pass {name}: option {key} given twice")
            opts[key] = parse_value(name, key, option_type(cls, key), val)
    return cls(**opts)


def parse_pipeline(text: str) -> list[Pass]:
    """Parse pipeline text into pass objects (``default`` expands in place)."""
    if not isinstance(text, str):
        raise PassError(f"a pipeline is text, got {type(text).__name__}")
    if not text.strip():
        return []
    out: list[Pass] = []
    for item in _split_top(text):
        if not item.strip():
            raise PassError(f"pipeline {text!r}: empty item; valid passes: {_choices()}")
        if item.strip() == "default":
            out.extend(parse_pipeline(default_pipeline_text()))
        else:
            out.append(parse_pass(item))
    return out


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str) and (not v or any(c in v for c in ",{}= '\"")):
        return '"' + v + '"'
    return str(v)


def format_pass(p: Pass) -> str:
    opts = p.non_default_options()
    if not opts:
        return p.name
    return p.name + "{" + ",".join(f"{k}={_format_value(v)}" for k, v in opts.items()) + "}"


def format_pipeline(passes: list[Pass]) -> str:
    return ",".join(format_pass(p) for p in passes)
