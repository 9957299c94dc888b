"""The group layouts of the advantage stage agree: contiguous equal groups (no sort),
scattered equal groups (sorted into the same table: bit for bit) and unequal groups
(padded blocks), and the shared per-group statistics match a plain per-group loop."""

import itertools
import math

import pytest
import torch

from gdpo_megatron.algorithms.advantages import ESTIMATORS, compute_advantages
from gdpo_megatron.algorithms.segments import GroupIndex, column_stats, group_stats, index_groups
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec

COMBOS = list(itertools.product(sorted(ESTIMATORS.names()), ("trl", "verl", "nemo_rl")))


def algo(estimator, preset):
    return AlgorithmConfig(estimator=estimator, preset=preset,
                           rewards=[RewardSpec(name=f"r{i}", weight=1.0 + 0.5 * i) for i in range(3)])


def equal_groups(seed, groups=6, size=8, missing=0.2):
    gen = torch.Generator().manual_seed(seed)
    n = groups * size
    rewards = torch.randint(0, 3, (n, 3), generator=gen).float() + 0.1 * torch.rand(n, 3, generator=gen)
    rewards[torch.rand(n, 3, generator=gen) < missing] = float("nan")
    rewards[:size, 1] = 2.0  # a constant group in one reward
    rewards[size:2 * size, :] = float("nan")  # a group without any reward
    rewards[2 * size, :] = float("nan")  # one rollout without any reward
    mask = (torch.arange(5).unsqueeze(0) < torch.randint(1, 6, (n, 1), generator=gen)).float()
    return rewards, torch.arange(n) // size * 7 + 3, mask


@pytest.mark.parametrize("estimator,preset", COMBOS)
def test_scattered_equal_groups_are_bitwise_the_contiguous_result(estimator, preset):
    rewards, group_ids, mask = equal_groups(1)
    n, size = rewards.shape[0], 8
    # interleave the groups: row s of every group, then row s + 1 ...; each group keeps its row order
    perm = torch.arange(n).view(-1, size).t().reshape(-1)
    assert index_groups(group_ids).order is None and index_groups(group_ids[perm]).order is not None
    config = algo(estimator, preset)
    base = compute_advantages(rewards, group_ids, config, mask)
    moved = compute_advantages(rewards[perm], group_ids[perm], config, mask[perm])
    assert torch.equal(moved.advantages, base.advantages[perm])
    assert torch.equal(moved.token_advantages, base.token_advantages[perm])
    assert moved.diagnostics == base.diagnostics


@pytest.mark.parametrize("missing", [0.0, 0.01, 0.2])  # none / a few groups redone / most groups: one masked pass
def test_fast_statistics_equal_the_padded_path_on_the_same_table(missing):
    rewards, group_ids, _ = equal_groups(2, groups=40, missing=missing)
    fast_index = index_groups(group_ids)
    assert fast_index.size == 8
    general = GroupIndex(num_groups=fast_index.num_groups, num_rows=fast_index.num_rows, sizes=fast_index.sizes)
    fast = group_stats(rewards, fast_index)
    slow = group_stats(rewards, general)
    for name in ("count", "total", "mean", "minimum", "maximum"):
        assert torch.equal(getattr(fast, name), getattr(slow, name)), name
    assert torch.allclose(fast.sq_dev, slow.sq_dev, rtol=1e-12, atol=0)
    assert torch.equal(fast.constant, slow.constant)
    assert torch.equal(fast_index.flat(fast.centered), slow.centered)
    assert fast.any_missing and slow.any_missing  # the batch always holds a rollout without rewards


def test_group_stats_match_a_per_group_loop_with_unequal_scattered_groups():
    gen = torch.Generator().manual_seed(3)
    n = 40
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    x[torch.rand(n, 2, generator=gen) < 0.25] = float("nan")
    ids = torch.randint(0, 7, (n,), generator=gen) * 5 - 9
    x[ids == ids[0], 0] = 1.5  # constant in reward 0
    index = index_groups(ids)
    assert index.size is None and index.order is not None
    stats = group_stats(x, index)
    for g, gid in enumerate(torch.unique(ids).tolist()):
        for k in range(2):
            values = [v for v in x[ids == gid, k].tolist() if not math.isnan(v)]
            assert stats.count[k, g] == len(values)
            if not values:
                assert stats.mean[k, g] == 0.0 and stats.std(1)[k, g] == 0.0
                continue
            mean = sum(values) / len(values)
            assert stats.mean[k, g] == pytest.approx(mean, abs=1e-12)
            spread = sum((v - mean) ** 2 for v in values)
            expected_std = math.sqrt(spread / (len(values) - 1)) if len(values) > 1 else 0.0
            assert stats.std(1)[k, g] == pytest.approx(expected_std, abs=1e-12)
            if len(set(values)) == 1:  # exact zeros, not round-off
                assert stats.constant[k, g] and stats.sq_dev[k, g] == 0.0 and stats.mean[k, g] == values[0]
    centered = index.from_layout(index.flat(stats.centered).t())
    assert torch.equal(centered == 0, torch.isnan(x) | (centered == 0))
    assert bool((centered[torch.isnan(x)] == 0).all())


def test_column_stats_of_contiguous_groups_need_no_permutation():
    x = torch.tensor([[1.0], [3.0], [2.0], [2.0]], dtype=torch.float64)
    index = index_groups(torch.tensor([4, 4, 9, 9]))
    stats = column_stats(index.columns(x), index)
    assert index.order is None and index.size == 2
    assert stats.mean.tolist() == [[2.0, 2.0]]
    assert stats.sq_dev[0, 0] == pytest.approx(2.0, rel=1e-15) and stats.sq_dev[0, 1] == 0.0
    assert stats.constant.tolist() == [[False, True]]


@pytest.mark.parametrize("ids", [[5, 5, 9, 9, 12, 12], [9, 5, 12, 5, 9, 12], [3, 3, 3, 1, 7, 1]])
def test_group_index_numbers_groups_in_sorted_id_order(ids):
    ids = torch.tensor(ids)
    index = index_groups(ids)
    unique, inverse = torch.unique(ids, return_inverse=True)
    assert index.num_groups == unique.numel()
    assert torch.equal(index.inverse, inverse)
    assert torch.equal(index.sizes, torch.bincount(inverse))
    rows = torch.arange(ids.numel())
    assert torch.equal(index.from_layout(index.to_layout(rows)), rows)
