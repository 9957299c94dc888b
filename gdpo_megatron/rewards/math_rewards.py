"""Math: `math_correctness` in {0, 1}, verified with the `math-verify` package.

The record's `answer` is the gold final answer ("42", "\\frac{1}{2}", "$x^2$"). The
response's answer is extracted by math-verify (last \\boxed{} first, else LaTeX or plain
expressions), and compared symbolically, so "0.5", "1/2" and "\\boxed{\\frac{2}{4}}" all
match a gold of "\\frac12".
"""

from __future__ import annotations

import math

from .registry import REWARDS


def _gold_text(answer: object) -> str:
    text = str(answer).strip()
    # A bare LaTeX gold ("\frac{1}{2}") is only recognised by math-verify inside math delimiters.
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


def is_equivalent(gold: object, response: str, timeout_s: int = 5) -> bool:
    from math_verify import parse, verify  # sympy import is slow: only when math is scored

    if not response.strip():
        return False
    gold_parsed = parse(_gold_text(gold), parsing_timeout=timeout_s)
    if not gold_parsed:
        raise ValueError(f"gold answer {gold!r} could not be parsed by math-verify")
    predicted = parse(response, parsing_timeout=timeout_s)
    return bool(predicted) and bool(verify(gold_parsed, predicted, timeout_seconds=timeout_s))


@REWARDS.register("math_correctness")
def math_correctness(record: dict, response: str, num_tokens: int, timeout_s: int = 5) -> float:
    """1.0 if the response's final answer equals record['answer'] (math-verify), else 0.0; NaN without a gold."""
    gold = record.get("answer")
    if gold is None or (isinstance(gold, float) and math.isnan(gold)):
        return math.nan
    return 1.0 if is_equivalent(gold, response, timeout_s) else 0.0
