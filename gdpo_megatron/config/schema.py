"""Typed, documented config objects built from merged recipe dicts.

Every section is a dataclass. Fields carry their documentation and numeric range in
`field(metadata=...)` via `option(...)`; `build(cls, data)` walks the type hints,
converts and checks every value, and raises a `ConfigError` naming the dotted key,
the file that set it, and the expected type or range. Cross-field rules live in each
dataclass's `validate()` method, next to the fields they relate.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError, did_you_mean

T = TypeVar("T")


def option(
    default: Any = MISSING,
    *,
    doc: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
) -> Any:
    """A documented config field with an optional numeric range."""
    metadata = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class Section:
    """Base of every config dataclass: cross-field checks go in `validate`."""

    def validate(self) -> None:  # noqa: D401 - hook
        """Raise ConfigError for inconsistent combinations of fields."""


@dataclass
class _Context:
    sources: Callable[[str], str]

    def fail(self, path: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{path}: {message} (set in {self.sources(path)})")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, path: str, ctx: _Context) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for candidate in options:
            if candidate is type(None):
                continue
            try:
                return _convert(candidate, value, path, ctx)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        ctx.fail(path, f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            hint = did_you_mean(str(value), [str(a) for a in allowed])
            ctx.fail(path, f"expected one of {', '.join(map(repr, allowed))}, got {value!r}{hint}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            ctx.fail(path, f"expected a list, got {value!r}")
        (item,) = get_args(tp)
        return [_convert(item, v, f"{path}[{i}]", ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            ctx.fail(path, f"expected a mapping, got {value!r}")
        _, item = get_args(tp)
        return {str(k): _convert(item, v, f"{path}.{k}", ctx) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            ctx.fail(path, f"expected a mapping (section), got {value!r}")
        return _build(tp, value, path, ctx)
    if tp is bool:
        if not isinstance(value, bool):
            ctx.fail(path, f"expected a boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            ctx.fail(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            ctx.fail(path, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            ctx.fail(path, f"expected a string, got {value!r}")
        return value
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {path}")


def _check_range(value: Any, meta: dict, path: str, ctx: _Context) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if isinstance(value, float) and math.isnan(value):
        ctx.fail(path, "must be a number, got NaN")
    checks = [("ge", ">=", lambda a, b: a >= b), ("gt", ">", lambda a, b: a > b),
              ("le", "<=", lambda a, b: a <= b), ("lt", "<", lambda a, b: a < b)]
    for key, symbol, ok in checks:
        bound = meta.get(key)
        if bound is not None and not ok(value, bound):
            ctx.fail(path, f"must be {symbol} {bound}, got {value!r}")


def _build(cls: type[T], data: dict, prefix: str, ctx: _Context) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            path = f"{prefix}.{key}" if prefix else str(key)
            ctx.fail(path, f"unknown key{did_you_mean(str(key), fields)}")
    kwargs = {}
    for name, f in fields.items():
        path = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{path}: required key is missing ({f.metadata.get('doc', '')})")
            continue
        value = _convert(hints[name], data[name], path, ctx)
        _check_range(value, f.metadata, path, ctx)
        kwargs[name] = value
    obj = cls(**kwargs)
    if isinstance(obj, Section):
        try:
            obj.validate()
        except ConfigError as exc:
            # validate() messages start with the offending key relative to this section.
            relative = re.split(r"[:\s\[]", str(exc), maxsplit=1)[0]
            full = ".".join(p for p in (prefix, relative) if p)
            raise ConfigError(f"{prefix + '.' if prefix else ''}{exc} (set in {ctx.sources(full)})") from None
    return obj


def build(cls: type[T], data: dict, sources: Callable[[str], str] = lambda _: "defaults") -> T:
    """Validate a nested dict into `cls`; errors name dotted keys and their source."""
    return _build(cls, data, "", _Context(sources))


def to_dict(obj: Any) -> Any:
    """A config object back to plain data (for YAML printing and checkpoint metadata)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, doc) for every field: the source of the config reference docs."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.append((path, "section", "", f.metadata.get("doc", "")))
            rows.extend(describe(tp, path))
            continue
        default = f.default if f.default is not MISSING else (
            to_dict(f.default_factory()) if f.default_factory is not MISSING else "(required)")
        rows.append((path, _type_name(tp), default, f.metadata.get("doc", "")))
    return rows
