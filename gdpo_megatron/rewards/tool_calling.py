"""Tool calling (ToolRL-style): output format, call parsing, `format` and `tool_correctness`.

Expected model output (the parts the ground truth has, in this order, each tag once):

    <think>reasoning</think>
    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    {"name": "get_time", "arguments": {"tz": "CET"}}
    </tool_call>
    <response>text for the user</response>

Record fields used (see docs/data.md): `tool_calls` (ground-truth calls, a list of
{"name", "arguments"}; empty when the right answer is a plain response) and
`expects_response` (bool; default: true when there are no ground-truth calls).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional

from .registry import REWARDS

TAGS = ("think", "tool_call", "response")

SYSTEM_PROMPT_HEAD = (
    "You are a helpful assistant that can call tools. Think first inside <think></think>. "
    "To call tools, write one JSON object per line inside <tool_call></tool_call>, each as "
    '{"name": <tool name>, "arguments": {<argument>: <value>}}. '
    "To answer the user, write inside <response></response>. Available tools:\n"
)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict


class ToolCallParseError(ValueError):
    """The <tool_call> block is missing or is not one JSON call object per line."""


def system_prompt(tools: list[dict]) -> str:
    """The system message listing the tools' JSON schemas, one per line."""
    return SYSTEM_PROMPT_HEAD + "\n".join(json.dumps(t, ensure_ascii=False, sort_keys=True) for t in tools)


def ground_truth_calls(record: dict) -> list[ToolCall]:
    return [_to_call(c, where=f"record {record.get('id')!r} tool_calls[{i}]")
            for i, c in enumerate(record.get("tool_calls") or [])]


def expected_parts(record: dict) -> tuple[str, ...]:
    """The tags the ground truth has, in output order."""
    has_calls = bool(record.get("tool_calls"))
    has_response = bool(record.get("expects_response", not has_calls))
    return ("think",) + (("tool_call",) if has_calls else ()) + (("response",) if has_response else ())


def _to_call(obj: Any, where: str) -> ToolCall:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ToolCallParseError(f"{where}: a call must be an object with a string 'name'")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # OpenAI style: arguments as a JSON-encoded string
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            raise ToolCallParseError(f"{where}: arguments string is not JSON ({exc})") from None
    if not isinstance(args, dict):
        raise ToolCallParseError(f"{where}: 'arguments' must be an object")
    return ToolCall(obj["name"], args)


def parse_tool_calls(response: str) -> list[ToolCall]:
    """Calls in the first <tool_call> block: one JSON object (or a JSON list of them) per line."""
    match = re.search(r"<tool_call>(.*?)</tool_call>", response, flags=re.DOTALL)
    if match is None:
        raise ToolCallParseError("no <tool_call>...</tool_call> block")
    calls: list[ToolCall] = []
    for number, line in enumerate(match.group(1).splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ToolCallParseError(f"line {number} of <tool_call> is not JSON ({exc.msg})") from None
        for item in obj if isinstance(obj, list) else [obj]:
            calls.append(_to_call(item, where=f"line {number} of <tool_call>"))
    if not calls:
        raise ToolCallParseError("empty <tool_call> block")
    return calls


def values_match(expected: Any, predicted: Any) -> bool:
    """Equality that keeps JSON types apart ("5" != 5, true != 1) but lets 5 == 5.0."""
    if isinstance(expected, bool) or isinstance(predicted, bool):
        return isinstance(expected, bool) and isinstance(predicted, bool) and expected == predicted
    if isinstance(expected, (int, float)) and isinstance(predicted, (int, float)):
        return float(expected) == float(predicted)
    if isinstance(expected, list) and isinstance(predicted, list):
        return len(expected) == len(predicted) and all(values_match(a, b) for a, b in zip(expected, predicted))
    if isinstance(expected, dict) and isinstance(predicted, dict):
        return expected.keys() == predicted.keys() and all(values_match(v, predicted[k]) for k, v in expected.items())
    return type(expected) is type(predicted) and expected == predicted


def _jaccard(a: Counter, b: Counter) -> float:
    union = sum((a | b).values())
    return 1.0 if union == 0 else sum((a & b).values()) / union


def correctness_score(truth: list[ToolCall], predicted: list[ToolCall]) -> float:
    """R = 6 (r_name + r_param + r_value) / S_max - 3, S_max = 1 + |G| + sum_j |keys(G_j)|."""
    r_name = _jaccard(Counter(c.name for c in truth), Counter(c.name for c in predicted))
    used = [False] * len(predicted)
    r_param = r_value = 0.0
    for gt in truth:
        # Greedy, in ground-truth order: the first unused predicted call with this name.
        j = next((j for j, p in enumerate(predicted) if not used[j] and p.name == gt.name), None)
        if j is None:
            continue
        used[j] = True
        pred = predicted[j]
        r_param += _jaccard(Counter(gt.arguments.keys()), Counter(pred.arguments.keys()))
        r_value += sum(1 for k, v in gt.arguments.items() if k in pred.arguments and values_match(v, pred.arguments[k]))
    s_max = 1 + len(truth) + sum(len(c.arguments) for c in truth)
    return 6.0 * (r_name + r_param + r_value) / s_max - 3.0


@REWARDS.register("tool_correctness")
def tool_correctness(record: dict, response: str, num_tokens: int) -> float:
    """In [-3, 3]: 3 for the exact calls, -3 for a missing/unparseable block, 0 when no call is due."""
    truth = ground_truth_calls(record)
    if not truth:
        return 0.0
    try:
        predicted = parse_tool_calls(response)
    except ToolCallParseError:
        return -3.0
    return correctness_score(truth, predicted)


@REWARDS.register("format")
def format_reward(record: dict, response: str, num_tokens: int) -> float:
    """1 if the response is exactly the expected blocks, in order, each tag once; else 0."""
    parts = expected_parts(record)
    for tag in TAGS:
        want = 1 if tag in parts else 0
        if response.count(f"<{tag}>") != want or response.count(f"</{tag}>") != want:
            return 0.0
    pattern = r"\s*".join(rf"<{t}>.*?</{t}>" for t in parts)
    return 1.0 if re.fullmatch(rf"\s*{pattern}\s*", response, flags=re.DOTALL) else 0.0


def render_calls(calls: list[dict], think: str = "", response: Optional[str] = None) -> str:
    """A model-style output for the given calls (used to build references and tests)."""
    lines = [json.dumps({"name": c["name"], "arguments": c.get("arguments", {})}, ensure_ascii=False) for c in calls]
    text = f"<think>{think}</think>\n"
    if lines:
        text += "<tool_call>\n" + "\n".join(lines) + "\n</tool_call>"
    if response is not None:
        text += f"\n<response>{response}</response>"
    return text

