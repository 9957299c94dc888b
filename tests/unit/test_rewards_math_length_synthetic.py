"""Golden values of math_correctness (math-verify), length and the synthetic task rewards."""

import math

import pytest

from gdpo_megatron.rewards import REWARDS

math_correct = REWARDS.get("math_correctness")


@pytest.mark.parametrize("gold,response,expected", [
    ("\\frac{1}{2}", "so the answer is \\boxed{0.5}", 1.0),
    ("\\frac{1}{2}", "x = 1/2", 1.0),
    ("\\frac{1}{2}", "$\\boxed{\\frac{2}{4}}$", 1.0),
    ("\\frac{1}{2}", "\\boxed{3}", 0.0),
    ("\\frac{1}{2}", "", 0.0),
    ("42", "42", 1.0),
    ("42", "The answer is $\\boxed{42}$.", 1.0),
    ("42", "first 41, finally \\boxed{43}", 0.0),
    ("$x^2+1$", "\\boxed{1+x^2}", 1.0),
    ("\\sqrt{2}", "\\boxed{\\frac{2}{\\sqrt{2}}}", 1.0),
    (7, "\\boxed{7}", 1.0),
])
def test_math_correctness_golden(gold, response, expected):
    assert math_correct({"id": "m", "answer": gold}, response, 10) == expected


def test_math_without_gold_is_nan():
    assert math.isnan(math_correct({"id": "m"}, "\\boxed{1}", 3))


def test_length_boundary():
    length = REWARDS.get("length")
    assert length({}, "", 4000) == 1.0 and length({}, "", 4001) == 0.0
    assert length({}, "", 12, max_tokens=12) == 1.0 and length({}, "", 13, max_tokens=12) == 0.0


# The docs' trade-off table: (response, tokens) -> (correct, format, length) with L = 8.
@pytest.mark.parametrize("response,tokens,expected", [
    ("<answer>42</answer>", 5, (1, 1, 1)),
    ("17+25=42 <answer>42</answer>", 14, (1, 1, 0)),
    ("<answer>42</answer>!", 6, (1, 0, 1)),
    ("<answer>43</answer>", 5, (0, 1, 1)),
    ("42", 3, (0, 0, 1)),
    ("", 1, (0, 0, 1)),
    ("<answer>40</answer><answer>42</answer>", 9, (1, 0, 0)),  # two tags: last counts, format fails
    ("<answer> 42 </answer>", 7, (1, 0, 1)),  # spaces inside: right number, not the exact form
    ("<answer>042</answer>\n", 7, (1, 1, 1)),  # trailing whitespace is not "something after"
    ("<answer>forty-two</answer>", 12, (0, 0, 0)),
])
def test_synthetic_rewards_golden(response, tokens, expected):
    record = {"id": "s", "answer": 42}
    got = tuple(REWARDS.get(f"synthetic_{n}")(record, response, tokens) for n in ("correct", "format", "length"))
    assert got == expected


def test_synthetic_negative_answer_and_missing_gold():
    assert REWARDS.get("synthetic_correct")({"answer": -8}, "<answer>-8</answer>", 5) == 1.0
    assert REWARDS.get("synthetic_format")({"answer": -8}, "<answer>-8</answer>", 5) == 1.0
    assert math.isnan(REWARDS.get("synthetic_correct")({}, "<answer>1</answer>", 5))
