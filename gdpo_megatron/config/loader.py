"""YAML recipes with `defaults:` inheritance and dotted command-line overrides.

The result of loading is a plain nested dict plus a map from each dotted key to the
place that set it last (a file path or "command line"), so that validation errors can
say where a bad value came from.

Merge rules:
- `defaults:` is one path or a list of paths, relative to the file that names them.
  They are merged in order, then the file itself on top: later wins.
- Nested mappings merge key by key; any other value (lists included) replaces.
- A mapping containing `_replace_: true` replaces its parent's mapping wholesale
  instead of merging into it (the marker itself is dropped).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, did_you_mean

REPLACE_MARKER = "_replace_"
DEFAULTS_KEY = "defaults"
COMMAND_LINE = "command line"
SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


@dataclass
class LoadedConfig:
    """A merged recipe: the raw nested dict and where each dotted key was set."""

    data: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    recipe_path: Path | None = None

    def source_of(self, dotted: str) -> str:
        """The file (or 'command line') that set `dotted` or its nearest parent."""
        key = dotted
        while key:
            if key in self.sources:
                return self.sources[key]
            key = key.rpartition(".")[0]
        return str(self.recipe_path) if self.recipe_path else "defaults"


def _record_sources(data: Any, origin: str, prefix: str, sources: dict[str, str]) -> None:
    if prefix:
        sources[prefix] = origin
    if isinstance(data, dict):
        for key, value in data.items():
            if key == REPLACE_MARKER:
                continue
            _record_sources(value, origin, f"{prefix}.{key}" if prefix else str(key), sources)


def _drop_sources_under(prefix: str, sources: dict[str, str]) -> None:
    for key in [k for k in sources if k.startswith(prefix + ".")]:
        del sources[key]


def _merge(base: dict, top: dict, origin: str, prefix: str, sources: dict[str, str]) -> dict:
    """Merge `top` into a copy of `base`, recording the origin of every key `top` sets."""
    merged = dict(base)
    for key, value in top.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value.get(REPLACE_MARKER):
            clean = {k: v for k, v in value.items() if k != REPLACE_MARKER}
            _drop_sources_under(dotted, sources)
            merged[key] = _strip_markers(clean)
            _record_sources(merged[key], origin, dotted, sources)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            sources[dotted] = origin
            merged[key] = _merge(merged[key], value, origin, dotted, sources)
        else:
            _drop_sources_under(dotted, sources)
            merged[key] = _strip_markers(copy.deepcopy(value))
            _record_sources(merged[key], origin, dotted, sources)
    return merged


def _strip_markers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_markers(v) for k, v in value.items() if k != REPLACE_MARKER}
    if isinstance(value, list):
        return [_strip_markers(v) for v in value]
    return value


def _read_yaml(path: Path, included_from: Path | None) -> dict:
    if not path.is_file():
        where = f" (named in `defaults:` of {included_from})" if included_from else ""
        raise ConfigError(f"recipe file not found: {path}{where}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping at the top level, got {type(data).__name__}")
    return data


def _load_file(path: Path, sources: dict[str, str], stack: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"circular `defaults:` chain: {chain}")
    data = _read_yaml(path, stack[-1] if stack else None)
    defaults = data.pop(DEFAULTS_KEY, [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"{path}: `defaults:` must be a path or a list of paths, got {defaults!r}")
    merged: dict = {}
    for entry in defaults:
        parent = _load_file(path.parent / entry, sources, (*stack, path))
        merged = _merge(merged, parent, str(path.parent / entry), "", {})
    # Re-record: sources of the parents were recorded by their own loads; now overlay ours.
    return _merge(merged, data, str(path), "", sources)


def load_recipe_file(path: str | Path) -> LoadedConfig:
    """Load one recipe with its `defaults:` chain (no overrides, no validation)."""
    sources: dict[str, str] = {}
    data = _load_file(Path(path), sources, ())
    return LoadedConfig(data=data, sources=sources, recipe_path=Path(path))


def parse_override_value(text: str) -> Any:
    """Type a command-line value the way YAML would: 3 -> int, 1e-6 -> float, true, null, [1, 2]."""
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads unquoted "1e-6" as a string; users mean a float.
    if isinstance(value, str) and SCIENTIFIC.fullmatch(text.strip()):
        return float(value)
    return value


def _exists(skeleton: Any, parts: list[str]) -> bool:
    node = skeleton
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _known_keys(node: dict, skeleton: Any, parents: list[str]) -> list[str]:
    """Keys a user could have meant at this level: the recipe's and the schema's."""
    keys = set(node)
    for part in parents:
        skeleton = skeleton.get(part) if isinstance(skeleton, dict) else None
    if isinstance(skeleton, dict):
        keys |= set(skeleton)
    return sorted(keys)


def apply_overrides(loaded: LoadedConfig, overrides: list[str], skeleton: dict | None = None) -> LoadedConfig:
    """Apply `a.b.c=value` (key must exist) and `+a.b=value` (key may be new).

    A key exists when the recipe sets it or when `skeleton` (the schema's defaults) has
    it, so every documented key can be overridden without `+`; `+` is for keys the
    schema does not define, such as entries of a free-form `args` mapping.
    """
    skeleton = skeleton or {}
    data = copy.deepcopy(loaded.data)
    sources = dict(loaded.sources)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"bad override {override!r}: expected key=value (e.g. algorithm.estimator=gdpo)")
        key, _, raw = override.partition("=")
        add = key.startswith("+")
        key = key.lstrip("+").strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override {override!r}: empty key segment")
        parts = key.split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            dotted = ".".join(parts[: depth + 1])
            if part not in node:
                if not add and not _exists(skeleton, parts[: depth + 1]):
                    raise ConfigError(
                        f"override {override!r}: no key `{dotted}` in the recipe or its schema"
                        f"{did_you_mean(part, _known_keys(node, skeleton, parts[:depth]))}; "
                        f"use +{key}=... to add a new key"
                    )
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"override {override!r}: `{dotted}` is a value, not a section")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node and not add and not _exists(skeleton, parts):
            raise ConfigError(
                f"override {override!r}: no key `{key}` in the recipe or its schema"
                f"{did_you_mean(leaf, _known_keys(node, skeleton, parts[:-1]))}; use +{key}=... to add a new key"
            )
        node[leaf] = parse_override_value(raw)
        _drop_sources_under(key, sources)
        _record_sources(node[leaf], COMMAND_LINE, key, sources)
    return LoadedConfig(data=data, sources=sources, recipe_path=loaded.recipe_path)
