"""BFCL's own AST checker (from the `bfcl-eval` package) on the project's tool-call outputs.

A response is parsed with the project's tool-call parser (`<tool_call>` block, one JSON call
per line) into BFCL's decoded form `[{name: {arg: value}}]` and judged by
`bfcl_eval.eval_checker.ast_eval.ast_checker.ast_checker` against the record's BFCL possible
answers (`record["bfcl"]`, written by `gdpo data prepare bfcl`). An unparseable response is
invalid, as in BFCL's own decode step.

`bfcl_eval.eval_checker.ast_eval.ast_checker` imports BFCL's model registry
(`bfcl_eval.constants.model_config`), which imports every API client BFCL can benchmark
(openai, anthropic, tree-sitter, ...). The checker only reads one flag from it,
`underscore_to_dot` (rename "a.b" to "a_b" for APIs that forbid dots); our models keep dots.
When that registry cannot be imported, a stand-in registry answering `underscore_to_dot=False`
for every model is installed before the checker is imported, so the checker's code is BFCL's,
unchanged.
"""

from __future__ import annotations

import importlib
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from gdpo_megatron.rewards.tool_calling import ToolCallParseError, parse_tool_calls

MODEL_NAME = "gdpo-megatron"


@dataclass(frozen=True)
class _NoRenaming:
    underscore_to_dot: bool = False


class _AnyModel(dict):
    def __missing__(self, key: str) -> _NoRenaming:
        return _NoRenaming()


@lru_cache(maxsize=1)
def load_checker() -> tuple[Callable, Any]:
    """(ast_checker, Language) from bfcl-eval; raises ImportError naming the package when absent."""
    if importlib.util.find_spec("bfcl_eval") is None:
        raise ImportError("BFCL scoring needs the `bfcl-eval` package (pip install --no-deps bfcl-eval==2026.3.23)")
    try:
        importlib.import_module("bfcl_eval.constants.model_config")
    except ImportError:
        stand_in = types.ModuleType("bfcl_eval.constants.model_config")
        stand_in.MODEL_CONFIG_MAPPING = _AnyModel()
        sys.modules["bfcl_eval.constants.model_config"] = stand_in
    checker = importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
    enums = importlib.import_module("bfcl_eval.constants.enums")
    return checker.ast_checker, enums.Language


def language_of(category: str):
    _, language = load_checker()
    if category.endswith("_java"):
        return language.JAVA
    if category.endswith("_javascript"):
        return language.JAVASCRIPT
    return language.PYTHON


def bfcl_correct(record: dict, response: str) -> bool:
    """BFCL AST verdict for one response to a record prepared from BFCL."""
    info = record.get("bfcl")
    if not isinstance(info, dict) or "category" not in info or "ground_truth" not in info:
        raise ValueError(f"record {record.get('id')!r}: no BFCL possible answers "
                         "(prepare it with `gdpo data prepare bfcl`)")
    try:
        calls = parse_tool_calls(response)
    except ToolCallParseError:
        return False
    decoded = [{call.name: call.arguments} for call in calls]
    checker, _ = load_checker()
    try:
        verdict = checker(record["tools"], decoded, info["ground_truth"], language_of(info["category"]),
                          info["category"], MODEL_NAME)
    except Exception:  # the checker indexes into model output; malformed calls can raise
        return False
    return bool(verdict.get("valid"))


def bfcl_metrics(records: list[dict], responses: list[list[str]]) -> dict[str, float]:
    """BFCL AST accuracy overall and per category (mean over samples, then over prompts)."""
    per_category: dict[str, list[float]] = {}
    for record, samples in zip(records, responses):
        if not samples:
            continue
        score = sum(bfcl_correct(record, s) for s in samples) / len(samples)
        per_category.setdefault(record["bfcl"]["category"], []).append(score)
    everything = [v for values in per_category.values() for v in values]
    out = {"bfcl_accuracy": sum(everything) / len(everything) if everything else float("nan")}
    for category, values in sorted(per_category.items()):
        out[f"bfcl_accuracy/{category}"] = sum(values) / len(values)
    return out
