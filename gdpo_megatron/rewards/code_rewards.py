"""Code: `code_pass` (passed tests / total) and `code_no_bug` (ran without a runtime/compile error).

The program is the last ```python fenced block of the response (or the whole response when
there is none). Record field `tests` (see docs/data.md), in one of two styles:

- stdin/stdout: {"style": "stdin", "cases": [{"input": "1 2\\n", "output": "3\\n"}, ...]};
  one sandboxed run per case, its stdout compared here, line by line, trailing whitespace ignored.
- function call: {"style": "function", "asserts": ["assert add(1, 2) == 3", ...]} (each a test)
  or HumanEval's {"style": "function", "test": "def check(candidate): ...", "entry_point": "add"}
  (one test), optionally with "context" (trusted helper code the test uses). The program and
  the tests run in separate sandboxes (code_tests.py): the program only answers calls with
  plain values, so it cannot see, patch or forge the verdict.

In every style the verdict is computed outside the program's process (docs/sandbox.md).
A wrong answer is not a bug; a syntax error, an uncaught exception, a resource kill or a
timeout is. Tests in a form that cannot be judged this way are refused (NaN, counted).
"""

from __future__ import annotations

import functools
import json
import math
import re

from .code_tests import CodeOutcome, CodeTestsRefused, plan_function_tests, run_function_tests
from .outcomes import count_event, value_range
from .registry import REWARDS
from .sandbox import Isolation, SandboxLimits, run_sandboxed

_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", flags=re.DOTALL | re.IGNORECASE)

__all__ = ["CodeOutcome", "CodeTestsRefused", "evaluate_code", "extract_program"]


def extract_program(response: str) -> str:
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else response


def _outputs_equal(expected: str, actual: str) -> bool:
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.rstrip().splitlines()]

    return lines(expected) == lines(actual)


def _run_stdin_cases(program: str, cases: list[dict], limits: SandboxLimits) -> CodeOutcome:
    passed, bug, timed_out = 0, False, False
    for case in cases:
        result = run_sandboxed(program, stdin=str(case.get("input", "")), limits=limits)
        timed_out |= result.killed_reason in ("wall_time", "cpu_time")
        if not result.ok:
            bug = True
            continue
        passed += _outputs_equal(str(case.get("output", "")), result.stdout)
    return CodeOutcome(passed, len(cases), bug, timed_out)


@functools.lru_cache(maxsize=256)
def _evaluate_cached(program: str, tests_json: str, limits: SandboxLimits, record_id) -> CodeOutcome:
    # code_pass and code_no_bug of one rollout share the runs (same worker, same arguments).
    tests = json.loads(tests_json)
    style = tests.get("style")
    if style == "stdin":
        return _run_stdin_cases(program, tests.get("cases", []), limits)
    if style == "function":
        return run_function_tests(program, plan_function_tests(tests, record_id), limits, record_id)
    raise CodeTestsRefused(f"record {record_id!r}: tests.style must be 'stdin' or 'function', got {style!r}")


def evaluate_code(record: dict, response: str, limits: SandboxLimits) -> CodeOutcome | None:
    tests = record.get("tests")
    if not tests:
        return None
    record_id = record.get("id")
    outcome = _evaluate_cached(extract_program(response), json.dumps(tests, sort_keys=True), limits,
                               record_id if isinstance(record_id, (str, int)) else repr(record_id))
    if outcome.timed_out:
        count_event("program_timeouts")
    return outcome


def _limits(timeout_s: float, memory_mb: int, max_processes: int, isolation: Isolation) -> SandboxLimits:
    return SandboxLimits(wall_time_s=timeout_s, cpu_time_s=timeout_s, memory_mb=memory_mb,
                         max_processes=max_processes, isolation=isolation)


@REWARDS.register("code_pass")
@value_range(0.0, 1.0)
def code_pass(record: dict, response: str, num_tokens: int, timeout_s: float = 5.0,
              memory_mb: int = 1024, max_processes: int = 16, isolation: Isolation = "namespaces") -> float:
    """Passed tests / total tests in [0, 1]; NaN for a record without tests."""
    outcome = evaluate_code(record, response, _limits(timeout_s, memory_mb, max_processes, isolation))
    if outcome is None or outcome.total == 0:
        return math.nan
    return outcome.passed / outcome.total


@REWARDS.register("code_no_bug")
@value_range(0.0, 1.0)
def code_no_bug(record: dict, response: str, num_tokens: int, timeout_s: float = 5.0,
                memory_mb: int = 1024, max_processes: int = 16, isolation: Isolation = "namespaces") -> float:
    """1 if every run finished without a compile/runtime error, resource kill or timeout; else 0."""
    outcome = evaluate_code(record, response, _limits(timeout_s, memory_mb, max_processes, isolation))
    if outcome is None:
        return math.nan
    return 0.0 if outcome.bug else 1.0
