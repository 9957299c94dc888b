"""Code: `code_pass` (passed tests / total) and `code_no_bug` (ran without a runtime/compile error).

The program is the last ```python fenced block of the response (or the whole response when
there is none). Record field `tests` (see docs/data.md), in one of two styles:

- stdin/stdout: {"style": "stdin", "cases": [{"input": "1 2\\n", "output": "3\\n"}, ...]};
  one sandboxed run per case, compared line by line with trailing whitespace ignored.
- function call: {"style": "function", "asserts": ["assert add(1, 2) == 3", ...]} or a
  HumanEval-style {"style": "function", "test": "def check(candidate): ...", "entry_point": "add"}
  (one test). All asserts of a rollout run in one sandboxed process; each is a test.

A wrong answer (a failed comparison or AssertionError) is not a bug; a syntax error, an
uncaught exception, a resource kill or a timeout is. The harness shares the process with the
untrusted program, so a program written to forge the harness's report could do so: use stdin
style where that matters (docs/sandbox.md).
"""

from __future__ import annotations

import functools
import json
import math
import re
import secrets
from dataclasses import dataclass

from .registry import REWARDS
from .sandbox import SandboxLimits, run_sandboxed

_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", flags=re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class CodeOutcome:
    passed: int
    total: int
    bug: bool  # a compile/runtime error, a resource kill or a timeout in any run


def extract_program(response: str) -> str:
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


def _outputs_equal(expected: str, actual: str) -> bool:
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.rstrip().splitlines()]

    return lines(expected) == lines(actual)


def _run_stdin_cases(program: str, cases: list[dict], limits: SandboxLimits) -> CodeOutcome:
    passed, bug = 0, False
    for case in cases:
        result = run_sandboxed(program, stdin=str(case.get("input", "")), limits=limits)
        if not result.ok:
            bug = True
            continue
        passed += _outputs_equal(str(case.get("output", "")), result.stdout)
    return CodeOutcome(passed, len(cases), bug)


_HARNESS = '''
import sys as _sys, traceback as _tb
_marker = {marker!r}
_tests = {tests!r}
_results = []
_namespace = {{"__name__": "__solution__"}}
try:
    exec(compile({program!r}, "solution.py", "exec"), _namespace)
except BaseException:
    _tb.print_exc()
    print(_marker + '{{"loaded": false}}', flush=True)
    raise SystemExit(1)
for _test in _tests:
    try:
        exec(compile(_test, "test.py", "exec"), _namespace)
        _results.append("pass")
    except AssertionError:
        _results.append("fail")
    except BaseException:
        _tb.print_exc()
        _results.append("error")
print(_marker + __import__("json").dumps({{"loaded": True, "results": _results}}), flush=True)
'''


def _function_tests(tests: dict) -> list[str]:
    if "asserts" in tests:
        return [str(a) for a in tests["asserts"]]
    return [f"{tests['test']}\ncheck({tests['entry_point']})"]


def _run_function_tests(program: str, tests: dict, limits: SandboxLimits) -> CodeOutcome:
    cases = _function_tests(tests)
    marker = f"@@gdpo-results-{secrets.token_hex(8)}@@"
    harness = _HARNESS.format(marker=marker, tests=cases, program=program)
    result = run_sandboxed(harness, limits=limits)
    report = None
    for line in result.stdout.splitlines():
        if line.startswith(marker):
            report = json.loads(line[len(marker):])
    if report is None or not report.get("loaded"):
        return CodeOutcome(0, len(cases), bug=True)
    outcomes = report["results"]
    passed = sum(o == "pass" for o in outcomes)
    bug = "error" in outcomes or result.killed_reason is not None
    return CodeOutcome(passed, len(cases), bug)


@functools.lru_cache(maxsize=256)
def _evaluate_cached(program: str, tests_json: str, limits: SandboxLimits) -> CodeOutcome:
    # code_pass and code_no_bug of one rollout share the runs (same worker, same arguments).
    tests = json.loads(tests_json)
    style = tests.get("style")
    if style == "stdin":
        return _run_stdin_cases(program, tests.get("cases", []), limits)
    if style == "function":
        return _run_function_tests(program, tests, limits)
    raise ValueError(f"tests.style must be 'stdin' or 'function', got {style!r}")


def evaluate_code(record: dict, response: str, limits: SandboxLimits) -> CodeOutcome | None:
    tests = record.get("tests")
    if not tests:
        return None
    return _evaluate_cached(extract_program(response), json.dumps(tests, sort_keys=True), limits)


def _limits(timeout_s: float, memory_mb: int, max_processes: int) -> SandboxLimits:
    return SandboxLimits(wall_time_s=timeout_s, cpu_time_s=timeout_s, memory_mb=memory_mb, max_processes=max_processes)


@REWARDS.register("code_pass")
def code_pass(record: dict, response: str, num_tokens: int, timeout_s: float = 5.0,
              memory_mb: int = 1024, max_processes: int = 16) -> float:
    """Passed tests / total tests in [0, 1]; NaN for a record without tests."""
    outcome = evaluate_code(record, response, _limits(timeout_s, memory_mb, max_processes))
    if outcome is None or outcome.total == 0:
        return math.nan
    return outcome.passed / outcome.total


@REWARDS.register("code_no_bug")
def code_no_bug(record: dict, response: str, num_tokens: int, timeout_s: float = 5.0,
                memory_mb: int = 1024, max_processes: int = 16) -> float:
    """1 if every run finished without a compile/runtime error, resource kill or timeout; else 0."""
    outcome = evaluate_code(record, response, _limits(timeout_s, memory_mb, max_processes))
    if outcome is None:
        return math.nan
    return 0.0 if outcome.bug else 1.0
