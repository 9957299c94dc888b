"""The fast path of the advantage stage (contiguous equal groups: no sort, unmasked moments
when nothing is missing) computes the same bits as the general path (the same rows
scattered over the batch, sorted back into groups; NaN-aware moments over padded blocks),
on random batches with missing values, constant groups and singleton groups."""

import itertools
import math

import pytest
import torch

from gdpo_megatron.algorithms.advantages import (ESTIMATORS, PRESETS, advantage_diagnostics, compute_advantages,
                                                  resolve_numerics, whiten)
from gdpo_megatron.algorithms.segments import GroupIndex, group_stats, index_groups
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec

CASES = list(itertools.product([1, 2, 3, 8, 16], [0.0, 0.05, 0.5]))  # group size, share of missing values


def random_batch(seed: int, size: int, missing: float, groups: int = 12, rewards: int = 3):
    """Contiguous groups of `size` rows (ids increasing, not consecutive), mixed reward types,
    some constant groups; a response mask of random lengths."""
    gen = torch.Generator().manual_seed(seed)
    n = groups * size
    values = torch.randint(0, 2, (n, rewards), generator=gen).float()  # binary
    values[:, 1] = torch.rand(n, generator=gen) * 3 - 1  # continuous
    values[:, 2] = torch.randint(0, 4, (n,), generator=gen) * 0.25  # a few levels
    for g in torch.randperm(groups, generator=gen)[: groups // 3].tolist():  # constant in some reward
        values[g * size:(g + 1) * size, g % rewards] = 0.1 * (g + 1)
    values[torch.rand(n, rewards, generator=gen) < missing] = float("nan")
    ids = torch.arange(n) // size * 5 + 2
    mask = (torch.arange(6).unsqueeze(0) < torch.randint(1, 7, (n, 1), generator=gen)).float()
    return values, ids, mask


def scattering(ids: torch.Tensor, seed: int) -> torch.Tensor:
    """A permutation that scatters the groups over the batch while every group keeps the
    relative order of its rows (what the stable sort of the general path restores)."""
    perm = torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(seed))
    moved = ids[perm]
    for gid in moved.unique().tolist():
        slots = (moved == gid).nonzero().flatten()
        perm[slots] = perm[slots].sort().values
    return perm


def config(estimator: str, preset: str) -> AlgorithmConfig:
    return AlgorithmConfig(estimator=estimator, preset=preset,
                           rewards=[RewardSpec(name=f"r{k}", weight=1.0 + 0.5 * k) for k in range(3)])


@pytest.mark.parametrize("size,missing", CASES)
def test_scattered_batches_are_bitwise_the_contiguous_result(size, missing):
    for seed in range(3):
        values, ids, mask = random_batch(seed, size, missing)
        perm = scattering(ids, 100 + seed)
        assert index_groups(ids).order is None
        if size > 1:
            assert index_groups(ids[perm]).order is not None
        for estimator, preset in itertools.product(sorted(ESTIMATORS.names()), sorted(PRESETS)):
            algorithm = config(estimator, preset)
            base = compute_advantages(values, ids, algorithm, mask)
            moved = compute_advantages(values[perm], ids[perm], algorithm, mask[perm])
            assert torch.equal(moved.advantages, base.advantages[perm]), (estimator, preset, seed)
            assert torch.equal(moved.token_advantages, base.token_advantages[perm]), (estimator, preset, seed)
            assert moved.diagnostics == base.diagnostics, (estimator, preset, seed)
            assert moved.gpg_alpha == base.gpg_alpha
            # plain floats: the metrics pipeline logs and pickles them (weights-only loads reject NumPy scalars)
            assert all(type(value) is float for value in base.diagnostics.values()), base.diagnostics


@pytest.mark.parametrize("size,missing", CASES)
def test_equal_groups_through_the_padded_blocks_give_the_same_statistics(size, missing):
    for seed in range(3):
        values, ids, _ = random_batch(seed, size, missing)
        fast_index = index_groups(ids)
        padded_index = GroupIndex(num_groups=fast_index.num_groups, num_rows=fast_index.num_rows,
                                  sizes=fast_index.sizes)
        fast, padded = group_stats(values, fast_index), group_stats(values, padded_index)
        for name in ("count", "mean", "sq_dev", "total", "minimum", "maximum"):
            assert torch.equal(getattr(fast, name), getattr(padded, name)), (name, seed)
        assert torch.equal(fast_index.flat(fast.centered), padded.centered)
        assert fast.any_missing == padded.any_missing == bool(torch.isnan(values).any())
        assert fast.sq_totals == padded.sq_totals
        assert fast.std_array(1).tolist() == padded.std_array(1).tolist()


def test_constant_groups_have_exact_means_and_zero_deviations_on_both_paths():
    # 0.1 * 16 is not a float sum of sixteen 0.1s: the mean must not be sum / count
    values = torch.tensor([[0.1]] * 16 + [[0.7], [float("nan")]] * 8, dtype=torch.float64)
    ids = torch.arange(32) // 16
    for index in (index_groups(ids), GroupIndex(num_groups=2, num_rows=32, sizes=torch.tensor([16, 16]))):
        stats = group_stats(values, index)
        assert stats.mean.tolist() == [[0.1, 0.7]]
        assert stats.sq_dev.tolist() == [[0.0, 0.0]]
        assert bool((stats.centered == 0).all())
        assert stats.constant.tolist() == [[True, True]]


@pytest.mark.parametrize("mode,eps", [("add", 1e-4), ("where_positive", 0.0), ("inside_sqrt", 1e-8)])
def test_the_whitening_summary_equals_the_diagnostics_of_the_result(mode, eps):
    values, ids, _ = random_batch(7, 16, 0.0, groups=40)
    algorithm = config("gdpo", "trl")
    stats = group_stats(values, index_groups(ids))
    scores = ESTIMATORS.get("gdpo").compute(stats, torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64),
                                             resolve_numerics(algorithm)).scores.numpy()
    final, summary = whiten(scores, None, mode, eps)
    assert summary is not None
    args = (values, stats, final, values.shape[0], algorithm.rewards, algorithm.reward_names)
    known, measured = advantage_diagnostics(*args, summary), advantage_diagnostics(*args)
    assert known["adv/min"] == measured["adv/min"] and known["adv/max"] == measured["adv/max"]  # bit for bit
    assert known["adv/mean"] == pytest.approx(measured["adv/mean"], abs=1e-14)
    assert known["adv/std"] == pytest.approx(measured["adv/std"], rel=1e-12)
    assert {k: v for k, v in known.items() if not k.startswith("adv/")} == \
        {k: v for k, v in measured.items() if not k.startswith("adv/")}
    constant, summary = whiten(scores * 0 + 3.0, None, mode, eps)  # identical scores: exact zeros
    assert not constant.any() and (summary.minimum, summary.maximum, summary.std) == (0.0, 0.0, 0.0)


def test_pooled_reward_std_is_exact_zero_for_a_constant_reward_and_matches_torch_otherwise():
    values, ids, _ = random_batch(3, 8, 0.0, groups=30)
    values[:, 0] = 0.3  # constant over the whole batch
    diagnostics = compute_advantages(values, ids, config("gdpo", "trl")).diagnostics
    assert diagnostics["reward/r0/std"] == 0.0
    assert diagnostics["reward/r0/zero_var_group_frac"] == 1.0
    for k in (1, 2):
        assert diagnostics[f"reward/r{k}/std"] == pytest.approx(float(values[:, k].double().std()), rel=1e-12)
    values[::5, 1] = float("nan")
    present = values[:, 1][~torch.isnan(values[:, 1])].double()
    diagnostics = compute_advantages(values, ids, config("gdpo", "trl")).diagnostics
    assert diagnostics["reward/r1/std"] == pytest.approx(float(present.std()), rel=1e-12)
    assert diagnostics["reward/r1/missing_frac"] == pytest.approx(1 - present.numel() / values.shape[0])


def test_index_groups_agrees_with_unique_on_random_ids():
    gen = torch.Generator().manual_seed(0)
    for trial in range(500):
        n = int(torch.randint(1, 30, (1,), generator=gen))
        ids = torch.randint(-4, 5, (n,), generator=gen) * (1 << 40)
        if trial % 2:
            ids = ids.sort().values
        index = index_groups(ids)
        unique, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
        assert index.num_groups == unique.numel() and torch.equal(index.sizes, counts)
        assert torch.equal(index.inverse, inverse)
        assert index.size == (int(counts[0]) if bool((counts == counts[0]).all()) else None)
        if index.order is None:
            assert bool((ids[1:] >= ids[:-1]).all())
        else:
            assert torch.equal(index.order, torch.argsort(ids, stable=True))


def test_large_batches_take_the_same_arithmetic_on_both_layouts():
    # above the BLAS threshold of the dot products
    values, ids, _ = random_batch(11, 16, 0.01, groups=1200)
    perm = scattering(ids, 5)
    algorithm = config("gdpo", "trl")
    base = compute_advantages(values, ids, algorithm)
    moved = compute_advantages(values[perm], ids[perm], algorithm)
    assert torch.equal(moved.advantages, base.advantages[perm])
    assert moved.diagnostics == base.diagnostics
    assert all(math.isfinite(v) for v in base.diagnostics.values())
