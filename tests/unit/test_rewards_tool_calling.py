"""Golden values of the ToolRL-style rewards, computed by hand from the ToolRL reward definition:
R = 6 (r_name + r_param + r_value) / S_max - 3, S_max = 1 + |G| + sum_j |keys(G_j)|."""

import json

import pytest

from gdpo_megatron.rewards import REWARDS
from gdpo_megatron.rewards.tool_calling import parse_tool_calls, render_calls, system_prompt

correctness = REWARDS.get("tool_correctness")
fmt = REWARDS.get("format")


def call_block(*calls, think="t"):
    lines = "\n".join(c if isinstance(c, str) else json.dumps(c) for c in calls)
    return f"<think>{think}</think>\n<tool_call>\n{lines}\n</tool_call>"


def call(name, **arguments):
    return {"name": name, "arguments": arguments}


WEATHER = {"id": "w", "tool_calls": [call("get_weather", city="Paris", days=3)]}  # S_max = 4
TWO = {"id": "two", "tool_calls": [call("f", a=1), call("g", b=2)]}  # S_max = 5
REPEATED = {"id": "rep", "tool_calls": [call("f", x=1), call("f", x=2)]}  # S_max = 5


@pytest.mark.parametrize("record,response,expected", [
    (WEATHER, call_block(call("get_weather", city="Paris", days=3)), 3.0),
    # one value wrong: 6 * (1 + 1 + 1) / 4 - 3
    (WEATHER, call_block(call("get_weather", city="Rome", days=3)), 1.5),
    # wrong type ("3" is not 3): same as a wrong value
    (WEATHER, call_block(call("get_weather", city="Paris", days="3")), 1.5),
    # 3.0 equals 3 (JSON numbers)
    (WEATHER, call_block(call("get_weather", city="Paris", days=3.0)), 3.0),
    # missing key: r_param = |{city}| / |{city, days}| = 1/2 -> 6 * 2.5 / 4 - 3
    (WEATHER, call_block(call("get_weather", city="Paris")), 0.75),
    # extra key: r_param = 2/3, both values right -> 6 * (1 + 2/3 + 2) / 4 - 3
    (WEATHER, call_block(call("get_weather", city="Paris", days=3, unit="C")), 2.5),
    # wrong tool name: nothing matches
    (WEATHER, call_block(call("get_time", city="Paris", days=3)), -3.0),
    # bad JSON, empty response, no block, empty block, a call without a name
    (WEATHER, call_block('{"name": "get_weather", "arguments": {"city": "Paris"'), -3.0),
    (WEATHER, "", -3.0),
    (WEATHER, "<think>I know</think>\n<response>sunny</response>", -3.0),
    (WEATHER, "<think></think>\n<tool_call>\n\n</tool_call>", -3.0),
    (WEATHER, call_block({"arguments": {"city": "Paris"}}), -3.0),
    # several calls, other order, one extra: r_name = 2/3, r_param = 2, r_value = 2 -> 6 * (14/3) / 5 - 3
    (TWO, call_block(call("g", b=2), call("f", a=1), call("h")), 2.6),
    # a JSON list on one line counts as the same calls
    (TWO, call_block(json.dumps([call("f", a=1), call("g", b=2)])), 3.0),
    # repeated names, one predicted: r_name = 1/2; f(x=1) takes f(x=2): param 1, value 0 -> 6 * 1.5 / 5 - 3
    (REPEATED, call_block(call("f", x=2)), -1.2),
    # repeated names matched greedily in order: both values cross -> 6 * (1 + 2 + 0) / 5 - 3
    (REPEATED, call_block(call("f", x=2), call("f", x=1)), 0.6),
    (REPEATED, call_block(call("f", x=1), call("f", x=2)), 3.0),
    # OpenAI style: arguments as a JSON string, and "parameters" as the key
    (WEATHER, call_block({"name": "get_weather", "arguments": json.dumps({"city": "Paris", "days": 3})}), 3.0),
    (WEATHER, call_block({"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}), 3.0),
    # no ground-truth call: 0 whatever the response
    ({"id": "r", "tool_calls": []}, call_block(call("f")), 0.0),
    ({"id": "r"}, "", 0.0),
])
def test_tool_correctness_golden(record, response, expected):
    assert correctness(record, response, 0) == pytest.approx(expected, abs=1e-12)


def test_bool_is_not_int():
    record = {"tool_calls": [call("set", flag=True)]}  # S_max = 3
    assert correctness(record, call_block(call("set", flag=1)), 0) == pytest.approx(6 * 2 / 3 - 3)
    assert correctness(record, call_block(call("set", flag=True)), 0) == 3.0


CALLS_ONLY = {"tool_calls": [call("f", a=1)]}
BOTH = {"tool_calls": [call("f", a=1)], "expects_response": True}
RESPONSE_ONLY = {"tool_calls": []}
GOOD_CALL = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'


@pytest.mark.parametrize("record,response,expected", [
    (CALLS_ONLY, f"<think>plan</think>\n{GOOD_CALL}", 1.0),
    (CALLS_ONLY, f"  <think>plan</think>{GOOD_CALL}\n", 1.0),
    (CALLS_ONLY, f"<think>plan</think>\n{GOOD_CALL} trailing", 0.0),
    (CALLS_ONLY, GOOD_CALL, 0.0),  # no think
    (CALLS_ONLY, f"<think>a</think><think>b</think>\n{GOOD_CALL}", 0.0),  # think twice
    (CALLS_ONLY, f"<think>plan</think>\n{GOOD_CALL}\n<response>done</response>", 0.0),  # response not due
    (BOTH, f"<think>plan</think>\n{GOOD_CALL}\n<response>done</response>", 1.0),
    (BOTH, f"<think>plan</think>\n<response>done</response>\n{GOOD_CALL}", 0.0),  # wrong order
    (BOTH, f"<think>plan</think>\n{GOOD_CALL}", 0.0),  # response missing
    (RESPONSE_ONLY, "<think>x</think>\n<response>hello</response>", 1.0),
    (RESPONSE_ONLY, f"<think>x</think>\n{GOOD_CALL}", 0.0),
    (RESPONSE_ONLY, "", 0.0),
    # format does not judge the JSON: correctness does
    (CALLS_ONLY, "<think>x</think>\n<tool_call>\nnot json\n</tool_call>", 1.0),
])
def test_format_golden(record, response, expected):
    assert fmt(record, response, 0) == expected


def test_render_round_trip_and_system_prompt():
    calls = [call("f", a=[1, 2], b={"c": None}), call("f", a=0)]
    text = render_calls(calls, think="why", response=None)
    assert [(c.name, c.arguments) for c in parse_tool_calls(text)] == [("f", {"a": [1, 2], "b": {"c": None}}), ("f", {"a": 0})]
    assert correctness({"tool_calls": calls}, text, 0) == 3.0 and fmt({"tool_calls": calls}, text, 0) == 1.0
    tools = [{"name": "f", "parameters": {"type": "object"}}]
    prompt = system_prompt(tools)
    assert prompt.endswith(json.dumps(tools[0], sort_keys=True)) and "<tool_call>" in prompt
