"""Splitting rollouts over ranks and choosing informative groups (driver-side, pure)."""

import math

import pytest
import torch

from gdpo_megatron.partition import even_ranges
from gdpo_megatron.rollout_batch import informative_groups, shard_rollouts


@pytest.mark.parametrize("total,parts,expected", [
    (10, 3, [(0, 4), (4, 7), (7, 10)]),
    (2, 4, [(0, 1), (1, 2), (2, 2), (2, 2)]),
    (0, 2, [(0, 0), (0, 0)]),
    (6, 1, [(0, 6)]),
])
def test_even_ranges(total, parts, expected):
    assert even_ranges(total, parts) == expected


def test_even_ranges_rejects_zero_parts():
    with pytest.raises(ValueError, match="into 0 parts"):
        even_ranges(3, 0)


def test_shards_keep_global_order_and_group_ids():
    n = 7
    rewards = torch.arange(n * 2, dtype=torch.float32).reshape(n, 2)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    shards = shard_rollouts([[i] for i in range(n)], [[10 + i] for i in range(n)], rewards, groups,
                            [[0.0]] * n, num_shards=2)
    assert [len(s) for s in shards] == [4, 3]
    assert torch.equal(torch.cat([s.rewards for s in shards]), rewards)
    assert torch.equal(shards[1].group_ids, torch.tensor([1, 2, 2]))  # group 1 straddles the two shards
    assert shards[1].prompt_ids == [[4], [5], [6]]


def test_informative_groups_treat_missing_values_as_equal():
    nan = math.nan
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0],      # group 5: all equal -> dropped
                            [0.0, 1.0], [1.0, 1.0],      # group 7: first reward varies
                            [nan, 1.0], [nan, 1.0],      # group 9: equal, missing alike -> dropped
                            [nan, 1.0], [2.0, 1.0]])     # group 3: missing vs present varies
    groups = torch.tensor([5, 5, 7, 7, 9, 9, 3, 3])
    # one flag per sorted group id: 3, 5, 7, 9
    assert informative_groups(rewards, groups).tolist() == [True, False, True, False]
