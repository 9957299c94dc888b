"""Record schemas per task, and their validation (errors name the file and line).

Every record, after `normalize_record`, has `id` (str), `task` and `messages`
(list of {"role", "content"}); a bare `prompt` string becomes one user message. The task
adds its ground truth (docs/data.md):

- synthetic, math: `answer` (the gold final answer).
- code: `tests`, {"style": "stdin", "cases": [{"input", "output"}]} or
  {"style": "function", "asserts": [...]} or {"style": "function", "test", "entry_point"}.
- tool_calling: `tools` (JSON schemas), `tool_calls` (ground-truth calls, each
  {"name", "arguments"}; may be empty), optional `expects_response` (bool). A system
  message listing the tools is added when the record has none.
- generic: nothing beyond the prompt (rewards that need no ground truth).
"""

from __future__ import annotations

from typing import Any

TASKS = ("synthetic", "math", "code", "tool_calling", "generic")


class RecordError(ValueError):
    """A bad input record; the message starts with `file:line`."""


def _fail(where: str, record_id: Any, message: str) -> None:
    label = f" (id {record_id!r})" if record_id is not None else ""
    raise RecordError(f"{where}{label}: {message}")


def _check_messages(messages: Any, where: str, record_id: Any) -> None:
    if not isinstance(messages, list) or not messages:
        _fail(where, record_id, "'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            _fail(where, record_id, f"messages[{i}] must be an object with string 'role' and 'content'")


def _check_tests(tests: Any, where: str, record_id: Any) -> None:
    if not isinstance(tests, dict):
        _fail(where, record_id, "'tests' must be an object")
    style = tests.get("style")
    if style == "stdin":
        cases = tests.get("cases")
        if not isinstance(cases, list) or not cases or not all(isinstance(c, dict) and "output" in c for c in cases):
            _fail(where, record_id, "tests.cases must be a non-empty list of {'input', 'output'}")
    elif style == "function":
        if "asserts" in tests:
            if not isinstance(tests["asserts"], list) or not tests["asserts"]:
                _fail(where, record_id, "tests.asserts must be a non-empty list of assert statements")
        elif not (isinstance(tests.get("test"), str) and isinstance(tests.get("entry_point"), str)):
            _fail(where, record_id, "function-style tests need 'asserts', or 'test' and 'entry_point'")
    else:
        _fail(where, record_id, f"tests.style must be 'stdin' or 'function', got {style!r}")


def _check_tool_calls(record: dict, where: str, record_id: Any) -> None:
    tools = record.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        _fail(where, record_id, "'tools' must be a list of JSON schema objects")
    calls = record.get("tool_calls")
    if not isinstance(calls, list):
        _fail(where, record_id, "'tool_calls' (ground-truth calls, possibly empty) must be a list")
    for i, call in enumerate(calls):
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) \
                or not isinstance(call.get("arguments", {}), dict):
            _fail(where, record_id, f"tool_calls[{i}] must be {{'name': str, 'arguments': object}}")


def normalize_record(raw: Any, task: str, where: str, default_id: str) -> dict:
    """Validate one raw record of `task` and return it with `id`, `task` and `messages` set."""
    if task not in TASKS:
        raise RecordError(f"{where}: unknown task {task!r}; tasks: {', '.join(TASKS)}")
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    record_id = raw.get("id")
    record = dict(raw)
    record["id"] = str(record_id) if record_id is not None else default_id
    record["task"] = task
    if "messages" in record:
        _check_messages(record["messages"], where, record_id)
    elif isinstance(record.get("prompt"), str) and record["prompt"]:
        record["messages"] = [{"role": "user", "content": record["prompt"]}]
    else:
        _fail(where, record_id, "needs 'messages' (list) or 'prompt' (non-empty string)")

    if task in ("synthetic", "math"):
        if record.get("answer") is None or str(record["answer"]).strip() == "":
            _fail(where, record_id, f"a {task} record needs 'answer'")
    elif task == "code":
        if "tests" not in record:
            _fail(where, record_id, "a code record needs 'tests'")
        _check_tests(record["tests"], where, record_id)
    elif task == "tool_calling":
        _check_tool_calls(record, where, record_id)
        if record.get("tools") and not any(m["role"] == "system" for m in record["messages"]):
            from gdpo_megatron.rewards.tool_calling import system_prompt

            record["messages"] = [{"role": "system", "content": system_prompt(record["tools"])}] + record["messages"]
    return record
