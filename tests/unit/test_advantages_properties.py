"""Invariances and edge cases of the advantage stage over every estimator and preset."""

import itertools

import pytest
import torch

from gdpo_megatron.algorithms.advantages import ESTIMATORS, compute_advantages
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec

PRESETS = ("trl", "verl", "nemo_rl")
COMBOS = list(itertools.product(sorted(ESTIMATORS.names()), PRESETS))


def algo(estimator="gdpo", preset="trl", k=3, **kwargs):
    return AlgorithmConfig(estimator=estimator, preset=preset,
                           rewards=[RewardSpec(name=f"r{i}", weight=1.0 + 0.5 * i) for i in range(k)], **kwargs)


def random_batch(seed, n=48, k=3, groups=9, missing=0.15, t=7):
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 3, (n, k), generator=gen).float() + 0.25 * torch.rand(n, k, generator=gen).round()
    rewards[torch.rand(n, k, generator=gen) < missing] = float("nan")
    group_ids = torch.randint(0, groups, (n,), generator=gen) * 11 - 30  # sparse, negative, unordered
    lengths = torch.randint(0, t + 1, (n,), generator=gen)
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()
    return rewards, group_ids, mask


@pytest.mark.parametrize("estimator,preset", COMBOS)
def test_permuting_rollouts_permutes_advantages(estimator, preset):
    rewards, group_ids, mask = random_batch(1)
    config = algo(estimator, preset)
    base = compute_advantages(rewards, group_ids, config, mask)
    perm = torch.randperm(rewards.shape[0], generator=torch.Generator().manual_seed(2))
    moved = compute_advantages(rewards[perm], group_ids[perm], config, mask[perm])
    assert torch.allclose(moved.advantages, base.advantages[perm], atol=1e-6, rtol=0)
    assert torch.allclose(moved.token_advantages, base.token_advantages[perm], atol=1e-6, rtol=0)
    # relabelling the groups changes nothing either
    relabelled = compute_advantages(rewards, group_ids * -3 + 1000, config, mask)
    assert torch.allclose(relabelled.advantages, base.advantages, atol=1e-6, rtol=0)


# nemo_rl's leave-one-out option is left out on purpose: where the leave-one-out std is 0
# (groups of two, or the others all equal) it does not divide, so that difference scales
# with the reward; see the test below.
@pytest.mark.parametrize("preset", ("trl", "verl", "nemo_rl"))
def test_gdpo_invariant_to_positive_affine_map_of_one_reward(preset):
    rewards, group_ids, mask = random_batch(3)
    mapped = rewards.clone()
    mapped[:, 1] = 7.0 * mapped[:, 1] - 4.0
    exact = dict(group_eps=0.0, batch_eps=0.0, batch_eps_mode="where_positive")
    a = compute_advantages(rewards, group_ids, algo("gdpo", preset, **exact), mask).advantages
    b = compute_advantages(mapped, group_ids, algo("gdpo", preset, **exact), mask).advantages
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    # with the preset's eps the map changes the result only by the eps effect
    a = compute_advantages(rewards, group_ids, algo("gdpo", preset), mask).advantages
    b = compute_advantages(mapped, group_ids, algo("gdpo", preset), mask).advantages
    assert torch.allclose(a, b, atol=2e-3, rtol=0)
    assert not torch.equal(a, b)


def test_nemo_rl_leave_one_out_undivided_fallback_scales_with_the_reward():
    # groups of two: the leave-one-out std is undefined (0), so the scores are plain
    # differences and a scaled reward changes them; the batch step removes a common scale only.
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    mapped = rewards * torch.tensor([1.0, 5.0])
    config = AlgorithmConfig(preset="nemo_rl", batch_norm="none", group_baseline="leave_one_out",
                             group_std="leave_one_out", rewards=[RewardSpec(name="a"), RewardSpec(name="b")])
    group_ids = torch.tensor([0, 0, 1, 1])
    assert compute_advantages(rewards, group_ids, config).advantages.tolist() == [0.0, 0.0, 1.0, -1.0]
    assert compute_advantages(mapped, group_ids, config).advantages.tolist() == [-4.0, 4.0, 1.0, -1.0]


def test_grpo_not_invariant_to_affine_map_of_one_reward():
    """The property above is GDPO's, not a tautology: GRPO's sum changes under the same map."""
    rewards, group_ids, mask = random_batch(3)
    mapped = rewards.clone()
    mapped[:, 1] = 7.0 * mapped[:, 1] - 4.0
    a = compute_advantages(rewards, group_ids, algo("grpo"), mask).advantages
    b = compute_advantages(mapped, group_ids, algo("grpo"), mask).advantages
    assert (a - b).abs().max() > 0.1


EDGE_CASES = {
    "size_one_groups": (torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]]), torch.tensor([0, 1])),
    "zero_variance": (torch.ones(6, 3), torch.tensor([0, 0, 0, 1, 1, 1])),
    "all_missing_rows": (torch.tensor([[float("nan")] * 3, [1.0, 0.0, 1.0], [float("nan")] * 3, [0.0, 0.0, 1.0]]),
                         torch.tensor([0, 0, 0, 0])),
    "all_missing_column": (torch.tensor([[1.0, float("nan"), 0.0], [0.0, float("nan"), 1.0], [1.0, float("nan"), 1.0]]),
                           torch.tensor([4, 4, 4])),
    "everything_missing": (torch.full((3, 3), float("nan")), torch.tensor([0, 0, 1])),
    "empty_batch": (torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)),
    "one_rollout": (torch.tensor([[0.5, 0.5, 0.5]]), torch.tensor([0])),
    "two_per_group": (torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [3.0, 3.0, 3.0], [3.0, 3.0, 3.0]]),
                      torch.tensor([0, 0, 1, 1])),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
@pytest.mark.parametrize("estimator,preset", COMBOS)
def test_no_nan_or_inf_ever_leaves_the_stage(case, estimator, preset):
    rewards, group_ids = EDGE_CASES[case]
    mask = torch.ones(rewards.shape[0], 4)
    for config in (algo(estimator, preset), algo(estimator, preset, group_eps=0.0, batch_eps=0.0,
                                                  **({"batch_norm": "sample"} if estimator == "gdpo" else {}))):
        result = compute_advantages(rewards, group_ids, config, mask)
        assert torch.isfinite(result.advantages).all() and torch.isfinite(result.token_advantages).all()
        assert all(isinstance(v, float) and v == v and abs(v) != float("inf") for v in result.diagnostics.values())
        all_missing = torch.isnan(rewards).all(dim=1)
        assert result.advantages[all_missing].eq(0).all()


def test_all_zero_variance_batch_is_exactly_zero_for_every_combo():
    rewards, group_ids = EDGE_CASES["zero_variance"]
    for estimator, preset in COMBOS:
        result = compute_advantages(rewards, group_ids, algo(estimator, preset), torch.ones(6, 2))
        assert result.advantages.tolist() == [0.0] * 6, (estimator, preset)


def test_output_dtype_shapes_and_diagnostic_keys():
    rewards, group_ids, mask = random_batch(4)
    result = compute_advantages(rewards.double(), group_ids, algo(), mask)
    assert result.advantages.dtype == torch.float32 and result.advantages.shape == (48,)
    assert result.token_advantages.shape == (48, 7) and result.token_advantages.dtype == torch.float32
    assert torch.equal(result.token_advantages, result.advantages.unsqueeze(1) * mask)
    for name in ("r0", "r1", "r2"):
        for stat in ("std", "missing_frac", "zero_var_group_frac"):
            assert f"reward/{name}/{stat}" in result.diagnostics
    for key in ("adv/mean", "adv/std", "adv/resolution_mean", "adv/zero_frac", "groups/count"):
        assert key in result.diagnostics
    assert result.diagnostics["groups/count"] == float(torch.unique(group_ids).numel())
    assert compute_advantages(rewards, group_ids, algo()).token_advantages is None


def test_resolution_counts_distinct_values_per_group():
    # group 0: values (0, 1, 2) -> 3 distinct; group 1: (1, 1) -> 1 distinct; mean 2
    rewards = torch.tensor([[0.0], [1.0], [2.0], [1.0], [1.0]])
    config = AlgorithmConfig(estimator="dr_grpo", rewards=[RewardSpec(name="x")])
    result = compute_advantages(rewards, torch.tensor([0, 0, 0, 1, 1]), config)
    assert result.diagnostics["adv/resolution_mean"] == 2.0


def test_bad_inputs_name_the_problem():
    config = algo()
    with pytest.raises(ValueError, match="rewards has 2 columns but algorithm.rewards lists 3: r0, r1, r2"):
        compute_advantages(torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), config)
    bad = torch.zeros(4, 3)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="reward 'r1' of rollout 2 is inf"):
        compute_advantages(bad, torch.zeros(4, dtype=torch.int64), config)
    with pytest.raises(ValueError, match="group_ids must be"):
        compute_advantages(torch.zeros(4, 3), torch.zeros(3, dtype=torch.int64), config)
    with pytest.raises(ValueError, match="integer tensor"):
        compute_advantages(torch.zeros(4, 3), torch.zeros(4), config)
