"""The value encoding between the candidate, the relay and the checker: round trips, and
nothing but builtins comes out of it."""

import math

import pytest

from gdpo_megatron.rewards.code_tests import CodeOutcome
from gdpo_megatron.rewards.code_values import decode, encode

VALUES = [None, True, False, 0, -7, 2**100, 1.5, -0.0, "", "é\n", b"\x00\xff", 1 + 2j, [], [1, [2, [3]]],
          (), (1, "a"), {1, 2}, frozenset({"x"}), {}, {1: "a", (1, 2): [3], "k": {"n": None}}, [(1,), {2}]]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip_keeps_value_and_type(value):
    back = decode(encode(value))
    assert back == value and type(back) is type(value)
    if isinstance(value, (list, tuple)):
        assert [type(x) for x in back] == [type(x) for x in value]


def test_non_finite_floats_and_subclasses_become_builtins():
    assert math.isnan(decode(encode(float("nan")))) and decode(encode(float("-inf"))) == float("-inf")

    class Sneaky(int):
        def __eq__(self, other):
            return True

    back = decode(encode([Sneaky(3), True]))
    assert back == [3, True] and type(back[0]) is int and type(back[1]) is bool
    assert back[0] != 4  # the builtin's equality, not the program's


@pytest.mark.parametrize("bad", [object(), lambda: 1, iter([1]), {1: object()}])
def test_objects_do_not_encode(bad):
    with pytest.raises(TypeError, match="not a plain value"):
        encode(bad)


@pytest.mark.parametrize("data", [{"a": 1}, {"$": "object", "v": []}, {"$": "tuple", "v": 3},
                                  {"$": "dict", "v": [[1]]}, {"$": "float", "v": "1e400"}, {"$": "tuple", "v": [], "x": 1}])
def test_malformed_data_is_rejected(data):
    with pytest.raises(ValueError):
        decode(data)


def test_depth_is_bounded():
    deep = []
    for _ in range(200):
        deep = [deep]
    with pytest.raises(ValueError, match="nested too deeply"):
        encode(deep)


def test_code_outcome_cannot_count_more_passes_than_tests():
    assert CodeOutcome(4, 4, bug=False).passed == 4 and CodeOutcome(0, 0, bug=True).total == 0
    for passed, total in ((5, 4), (400, 4), (1, 0), (-1, 4)):
        with pytest.raises(ValueError, match=f"^{passed} passes for {total} tests$"):
            CodeOutcome(passed, total, bug=False)
