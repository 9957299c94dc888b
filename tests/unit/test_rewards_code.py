"""code_pass / code_no_bug on both test styles, through the real sandbox."""

import math

import pytest

from gdpo_megatron.rewards import REWARDS
from gdpo_megatron.rewards.code_tests import CodeTestsRefused
from gdpo_megatron.rewards.sandbox_preflight import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason("namespaces") is not None,
                                reason=f"the default sandbox mode cannot run here: {unavailable_reason('namespaces')}")

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


def test_values_keep_their_types_and_exceptions_their_names():
    record = {"id": "types", "tests": {"style": "function", "asserts": [
        "assert pair(1) == (1, 1)",  # a list would not equal this tuple
        "assert pair(2) != [2, 2]",
        "assert keys() == {1: 'a', (2, 3): {4}}",
        "assert math.isclose(third(1.0), 0.3333, rel_tol=1e-3)",  # math: imported by the checker
        "try:\n    pair(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no error')",
    ]}}
    program = ("def pair(x):\n    if x < 0:\n        raise ValueError(x)\n    return (x, x)\n"
               "def keys():\n    return {1: 'a', (2, 3): {4}}\ndef third(x):\n    return x / 3")
    assert code_pass(record, program, 0, timeout_s=5.0) == 1.0
    listy = program.replace("return (x, x)", "return [x, x]")
    assert code_pass(record, listy, 0, timeout_s=5.0) == pytest.approx(3 / 5)


HUMANEVAL_32_LIKE = {"style": "function", "entry_point": "find_zero",
                     "test": "def check(candidate):\n    assert abs(poly([1, 2], candidate([1, 2]))) < 1e-6\n"}
POLY = "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n"


@pytest.mark.parametrize("tests,message", [
    ({"style": "function", "asserts": ["assert 1 == 1"]}, "never call a function of the program"),
    ({"style": "function", "asserts": ["assert callable(f)", "assert f(1) == 1"]}, "use f other than by calling it"),
    ({"style": "function", "asserts": ["assert f(1) == "]}, r"tests.asserts\[0\] does not parse"),
    ({"style": "function", "asserts": ["assert apply(lambda x: x, 1) == 1"]}, "only plain values can be passed"),
    (HUMANEVAL_32_LIKE, "uses poly, defined neither by the test nor in tests.context"),
    ({"style": "function", "entry_point": "f", "test": "assert f(1) == 1"}, "must define check"),
    ({"style": "junit"}, "tests.style must be"),
])
def test_unsupported_forms_are_refused_naming_the_record(tests, message):
    with pytest.raises(CodeTestsRefused, match=message) as refused:
        code_pass({"id": "rec-7", "tests": tests}, "def f(x):\n    return x\ndef apply(g, x):\n    return g(x)", 0)
    assert "record 'rec-7'" in str(refused.value)


def test_helpers_from_the_problem_statement_come_from_context():
    tests = {**HUMANEVAL_32_LIKE, "context": POLY + "def find_zero(xs):\n    '''stub'''\n"}
    assert code_pass({"id": "he32", "tests": tests}, "def find_zero(xs):\n    return -xs[0] / xs[1]", 0) == 1.0
    # The program's own `poly` is never used by the test (it would make any answer pass).
    forged = "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 123.0"
    assert code_pass({"id": "he32", "tests": tests}, forged, 0) == 0.0
