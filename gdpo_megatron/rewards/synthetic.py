"""Rewards of the synthetic arithmetic task (embedded CPU recipe); see docs/rewards.md.

The three rewards pull apart on purpose: `synthetic_format` accepts worked steps before
the final tag, which helps a tiny model get the sum right (`synthetic_correct`), while
`synthetic_length` leaves room only for the bare answer. Example rows (L = 8 tokens,
character tokens plus one token per tag, EOS included):

    response                          correct  format  length
    <answer>42</answer>                   1       1       1
    17+25=42 <answer>42</answer>          1       1       0
    <answer>42</answer>!                  1       0       1
    <answer>43</answer>                   0       1       1
"""

from __future__ import annotations

import math
import re

from .registry import REWARDS

_ANSWER = re.compile(r"<answer>(.*?)</answer>", flags=re.DOTALL)
_FINAL = re.compile(r"<answer>-?\d+</answer>\s*\Z")

DEFAULT_MAX_TOKENS = 8


def extract_answer(response: str) -> str | None:
    """Content of the last <answer> tag, stripped; None without one."""
    found = _ANSWER.findall(response)
    return found[-1].strip() if found else None


@REWARDS.register("synthetic_correct")
def synthetic_correct(record: dict, response: str, num_tokens: int) -> float:
    """1 if the last <answer> holds the right integer (leading '+'/zeros tolerated), else 0."""
    if record.get("answer") is None:
        return math.nan
    answer = extract_answer(response)
    if answer is None or not re.fullmatch(r"[+-]?\d+", answer):
        return 0.0
    return 1.0 if int(answer) == int(record["answer"]) else 0.0


@REWARDS.register("synthetic_format")
def synthetic_format(record: dict, response: str, num_tokens: int) -> float:
    """1 if the response ends with exactly one `<answer>N</answer>` (N an integer) and nothing after it."""
    if response.count("<answer>") != 1 or response.count("</answer>") != 1:
        return 0.0
    return 1.0 if _FINAL.search(response) else 0.0


@REWARDS.register("synthetic_length")
def synthetic_length(record: dict, response: str, num_tokens: int, max_tokens: int = DEFAULT_MAX_TOKENS) -> float:
    """1 if the response has at most max_tokens tokens (tight: room for the bare answer only)."""
    return 1.0 if num_tokens <= max_tokens else 0.0
