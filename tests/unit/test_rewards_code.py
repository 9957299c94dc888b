"""code_pass / code_no_bug on both test styles, through the real sandbox."""

import math

import pytest

from gdpo_megatron.rewards import REWARDS

code_pass = REWARDS.get("code_pass")
no_bug = REWARDS.get("code_no_bug")

STDIN = {"id": "sum", "tests": {"style": "stdin", "cases": [
    {"input": "1 2\n", "output": "3\n"}, {"input": "5 5", "output": "10"}, {"input": "-1 1", "output": "0"}]}}
ASSERTS = {"id": "add", "tests": {"style": "function", "asserts": [
    "assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4", "assert add('a', 'b') == 'ab'"]}}
HUMANEVAL_STYLE = {"id": "he", "tests": {"style": "function", "entry_point": "add",
                                         "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}}


@pytest.mark.parametrize("record,response,expected_pass,expected_no_bug", [
    (STDIN, "```python\na, b = map(int, input().split())\nprint(a + b)\n```", 1.0, 1.0),
    (STDIN, "a, b = map(int, input().split())\nprint(a * b if a > 0 else a + b)", 1 / 3, 1.0),  # wrong answers, no bug
    (STDIN, "a, b = map(int, input().split())\nprint(a + b)\nif a == 5: raise ValueError", 2 / 3, 0.0),  # one crash
    (STDIN, "def broken(:\n", 0.0, 0.0),  # syntax error
    (STDIN, "", 0.0, 1.0),  # prints nothing: wrong, but ran
    (ASSERTS, "Here:\n```python\ndef add(a, b):\n    return a + b\n```", 1.0, 1.0),
    (ASSERTS, "def add(a, b):\n    return 5 if a == -1 else a + b", 0.75, 1.0),  # one AssertionError: no bug
    (ASSERTS, "def add(a, b):\n    return int(a) + int(b)", 0.75, 0.0),  # ValueError on 'a': a runtime error
    (ASSERTS, "raise SystemExit(0)\ndef add(a, b):\n    return a + b", 0.0, 0.0),  # exits before the tests
    (ASSERTS, "def add(a, b):\n    while True: pass", 0.0, 0.0),  # timeout
    (HUMANEVAL_STYLE, "def add(x, y):\n    return x + y", 1.0, 1.0),
    (HUMANEVAL_STYLE, "def add(x, y):\n    return x * y", 0.0, 1.0),
])
def test_code_rewards_golden(record, response, expected_pass, expected_no_bug):
    args = {"timeout_s": 2.0, "memory_mb": 512, "max_processes": 8}
    assert code_pass(record, response, 0, **args) == pytest.approx(expected_pass)
    assert no_bug(record, response, 0, **args) == expected_no_bug


def test_record_without_tests_is_nan():
    assert math.isnan(code_pass({"id": "x"}, "print(1)", 0)) and math.isnan(no_bug({"id": "x"}, "print(1)", 0))


def test_unknown_style_is_an_error():
    with pytest.raises(ValueError, match="tests.style"):  # a refusal (RewardRefused is a ValueError)
        code_pass({"tests": {"style": "junit"}}, "print(1)", 0)
