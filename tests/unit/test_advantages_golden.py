"""Golden values of the advantage stage, computed by hand (formulas written out below)."""

import math
import statistics

import pytest
import torch

from gdpo_megatron.algorithms.advantages import (apply_reward_conditions, compute_advantages, resolve_numerics)
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardCondition, RewardSpec

NAN = float("nan")
S2 = math.sqrt(2.0)


def algo(names=("a", "b"), weights=None, **kwargs) -> AlgorithmConfig:
    weights = weights or [1.0] * len(names)
    return AlgorithmConfig(rewards=[RewardSpec(name=n, weight=w) for n, w in zip(names, weights)], **kwargs)


def adv(rewards, groups, config, mask=None):
    result = compute_advantages(torch.tensor(rewards, dtype=torch.float32), torch.tensor(groups), config, mask)
    return result


def close(actual, expected, tol=1e-6):
    assert actual.dtype == torch.float32
    assert torch.allclose(actual.double(), torch.tensor(expected, dtype=torch.float64), atol=tol, rtol=0), \
        f"{actual.tolist()} != {expected}"


# --------------------------------------------------------------------- the paper's toy case

def test_paper_toy_grpo_collapses_both_to_0_7071():
    # totals (0,1) and (0,2): GRPO gives (-1/sqrt2, +1/sqrt2) for both (no eps, no batch step)
    config = algo(estimator="grpo", group_eps=0.0)
    result = adv([[0, 0], [0, 1], [0, 0], [1, 1]], [0, 0, 1, 1], config)
    close(result.advantages, [-1 / S2, 1 / S2, -1 / S2, 1 / S2])


def test_paper_toy_gdpo_separates_0_7071_and_1_4142():
    config = algo(estimator="gdpo", group_eps=0.0, batch_norm="none")
    result = adv([[0, 0], [0, 1], [0, 0], [1, 1]], [0, 0, 1, 1], config)
    close(result.advantages, [-1 / S2, 1 / S2, -S2, S2])


# --------------------------------------------------------------------- TRL preset (default)

def test_trl_gdpo_group_eps_and_batch_step():
    # group 0: a (0,1) -> +-0.5/(sqrt(.5)+1e-4); b (0,1) the same; group 1: a constant -> 0, b (0,1).
    config = algo()
    assert resolve_numerics(config).group_eps == 1e-4
    g = 0.5 / (math.sqrt(0.5) + 1e-4)
    scores = [-2 * g, 2 * g, -g, g]
    mean = 0.0
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / 3)
    expected = [(s - mean) / (std + 1e-4) for s in scores]
    close(adv([[0, 0], [1, 1], [0, 0], [0, 1]], [0, 0, 1, 1], config).advantages, expected)


def test_trl_nan_aware_stats_and_all_missing_row_is_zero_and_excluded():
    # group 0 (3 rows): a = [1, NaN, 0] -> stats over {1, 0}; b = [1, 1, 0]: mean 2/3, var 1/3.
    # group 1 (2 rows): row 3 has no reward at all -> advantage 0, out of the batch statistics;
    #                   row 4 alone in its reward columns -> group of one valid value -> 0.
    config = algo()
    ga = 0.5 / (math.sqrt(0.5) + 1e-4)
    sb = math.sqrt(1 / 3) + 1e-4
    scores = [ga + (1 / 3) / sb, 0 + (1 / 3) / sb, -ga - (2 / 3) / sb, 0.0]  # rows 0, 1, 2, 4
    mean = sum(scores) / 4
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / 3)
    norm = [(s - mean) / (std + 1e-4) for s in scores]
    result = adv([[1, 1], [NAN, 1], [0, 0], [NAN, NAN], [1, 0]], [7, 7, 7, 9, 9], config)
    close(result.advantages, [norm[0], norm[1], norm[2], 0.0, norm[3]])
    d = result.diagnostics
    assert d["reward/a/missing_frac"] == pytest.approx(2 / 5)
    assert d["reward/b/missing_frac"] == pytest.approx(1 / 5)
    assert d["adv/all_missing_frac"] == pytest.approx(1 / 5)
    # a's present values {1, 0, 1}: unbiased std sqrt(1/3); the batch means are the trainer's keys
    assert d["reward/a/std"] == pytest.approx(math.sqrt(1 / 3)) and "reward/a/mean" not in d
    # a: group 7 has {1, 0} (varies), group 9 has one value {1} (no signal) -> 1/2
    assert d["reward/a/zero_var_group_frac"] == pytest.approx(0.5)


def test_trl_size_one_groups_and_zero_variance_give_exact_zero():
    config = algo()
    result = adv([[1, 0], [0.3, 0.3], [0.3, 0.3], [0.3, 0.3]], [0, 1, 1, 1], config)
    assert result.advantages.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert result.diagnostics["reward/a/zero_var_group_frac"] == 1.0
    assert result.diagnostics["adv/resolution_mean"] == 1.0


# --------------------------------------------------------------------- verl preset

def test_verl_singleton_raw_and_token_whitening_matches_per_token_definition():
    # group 0: a (0,1), b (1,1) -> scores -+0.5/(sqrt(.5)+1e-6); group 1 has one rollout: mean 0, std 1.
    config = algo(preset="verl")
    g = 0.5 / (math.sqrt(0.5) + 1e-6)
    lone = (0.5 + 2.0) / (1 + 1e-6)
    scores = [-g, g, lone]
    lengths = [3, 1, 2]
    mask = torch.zeros(3, 4)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    tokens = [s for s, n in zip(scores, lengths) for _ in range(n)]  # verl whitens token values
    mu = statistics.mean(tokens)
    var = statistics.variance(tokens)  # unbiased
    expected = [(s - mu) / math.sqrt(var + 1e-8) for s in scores]
    result = adv([[0, 1], [1, 1], [0.5, 2.0]], [0, 0, 5], config, mask)
    close(result.advantages, expected, tol=1e-5)
    expected_tokens = torch.tensor(expected).unsqueeze(1) * mask
    assert torch.allclose(result.token_advantages, expected_tokens, atol=1e-5)
    assert result.token_advantages[1, 1:].eq(0).all()


def test_verl_requires_a_response_mask():
    with pytest.raises(ValueError, match="needs response_mask"):
        adv([[0, 1], [1, 1]], [0, 0], algo(preset="verl"))


# --------------------------------------------------------------------- NeMo-RL preset

LOO = dict(group_baseline="leave_one_out", group_std="leave_one_out")  # NeMo-RL's use_leave_one_out_baseline: true


def test_nemo_rl_shipped_gdpo_config_group_mean_and_unbiased_std():
    # NeMo-RL's GDPO recipes: use_leave_one_out_baseline false. [1, 1, 0] per group: mean 2/3,
    # unbiased std sqrt(1/3): scores (1/3)/(s+1e-6), (1/3)/(s+1e-6), (-2/3)/(s+1e-6), then the batch
    # step (x - mean)/unbiased std; both groups equal, so the result is the standardized [1, 1, -2].
    config = algo(names=("a",), preset="nemo_rl")
    z = [v / statistics.stdev([1, 1, -2, 1, 1, -2]) for v in (1, 1, -2)]
    close(adv([[1], [1], [0], [1], [1], [0]], [0, 0, 0, 1, 1, 1], config).advantages, z + z)
    s = math.sqrt(1 / 3)
    close(adv([[1], [1], [0]], [0, 0, 0], algo(names=("a",), preset="nemo_rl", batch_norm="none")).advantages,
          [(1 / 3) / (s + 1e-6), (1 / 3) / (s + 1e-6), (-2 / 3) / (s + 1e-6)])

def test_nemo_rl_leave_one_out_mean_and_std_then_batch_unbiased_no_eps():
    # [1, 0, 0, 1]: each 1 sees others [0, 0, 1] (mean 1/3, unbiased std sqrt(1/3)), each 0 sees [1, 0, 1].
    # Scores are +-c with c = (2/3)/(sqrt(1/3)+1e-6); batch: mean 0, std = c*sqrt(4/3) -> +-sqrt(3)/2.
    config = algo(names=("a",), preset="nemo_rl", **LOO)
    h = math.sqrt(3) / 2
    close(adv([[1], [0], [0], [1]], [0, 0, 0, 0], config).advantages, [h, -h, -h, h])


def test_nemo_rl_others_constant_means_no_division():
    # [1, 0, 0]: row 0's others are [0, 0] (std 0) -> 1 - 0 = 1; rows 1, 2 see [1, 0]: -0.5/(sqrt(.5)+1e-6).
    config = algo(names=("a",), preset="nemo_rl", batch_norm="none", **LOO)
    m = -0.5 / (math.sqrt(0.5) + 1e-6)
    close(adv([[1], [0], [0]], [3, 3, 3], config).advantages, [1.0, m, m])


def test_nemo_rl_batch_std_zero_only_subtracts_mean():
    # groups of 2 rollouts [1, 0]: one other value -> LOO std undefined (0) -> no division: scores +-1;
    # batch std sqrt(4/3) > 0 divides. Identical rewards: all scores 0, batch std 0 -> only centered (0).
    config = algo(names=("a",), preset="nemo_rl", **LOO)
    close(adv([[1], [0], [1], [0]], [0, 0, 1, 1], config).advantages,
          [x / math.sqrt(4 / 3) for x in (1.0, -1.0, 1.0, -1.0)])
    config_sample = algo(names=("a",), preset="nemo_rl", batch_eps_mode="where_positive")
    assert adv([[2], [2], [2]], [0, 0, 0], config_sample).advantages.tolist() == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------- the other estimators

def test_grpo_weights_applied_before_normalization():
    # weights (2, 0.5): totals 2, 0.5, 2.5 -> mean 5/3, unbiased var 13/12
    config = algo(estimator="grpo", weights=[2.0, 0.5], group_eps=0.0)
    std = math.sqrt(13 / 12)
    close(adv([[1, 0], [0, 1], [1, 1]], [0, 0, 0], config).advantages,
          [(1 / 3) / std, (-7 / 6) / std, (5 / 6) / std])


def test_gdpo_weights_applied_after_normalization():
    # a: (1, 0) -> +-1/sqrt2 ; b: (0, 1) -> -+1/sqrt2 ; weights (2, 0.5) -> +-1.5/sqrt2
    config = algo(weights=[2.0, 0.5], group_eps=0.0, batch_norm="none")
    close(adv([[1, 0], [0, 1]], [0, 0], config).advantages, [1.5 / S2, -1.5 / S2])


def test_grpo_leave_one_out_baseline_option():
    config = algo(names=("a",), estimator="grpo", group_baseline="leave_one_out", group_std="none")
    close(adv([[3], [1], [2]], [0, 0, 0], config).advantages, [3 - 1.5, 1 - 2.5, 2 - 2.0])


def test_grpo_nostd_dr_grpo_rloo_values():
    rows, groups = [[3], [1], [2], [5]], [0, 0, 0, 1]
    close(adv(rows, groups, algo(names=("a",), estimator="grpo_nostd")).advantages, [1, -1, 0, 0])
    close(adv(rows, groups, algo(names=("a",), estimator="dr_grpo")).advantages, [1, -1, 0, 0])
    close(adv(rows, groups, algo(names=("a",), estimator="rloo")).advantages, [1.5, -1.5, 0, 0])


def test_gpg_alpha_counts_rollouts_in_degenerate_groups():
    # group 0 varies (4 rows), group 1 all 1 (4 rows), group 2 all 0 (2 rows): alpha = 10 / (10 - 6)
    rows = [[1], [0], [1], [0], [1], [1], [1], [1], [0], [0]]
    groups = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    result = adv(rows, groups, algo(names=("a",), estimator="gpg"))
    assert result.gpg_alpha == pytest.approx(2.5)
    assert result.diagnostics["adv/gpg_alpha"] == pytest.approx(2.5)
    close(result.advantages, [0.5, -0.5, 0.5, -0.5] + [0.0] * 6)


def test_gpg_all_degenerate_alpha_is_one():
    result = adv([[1], [1]], [0, 0], algo(names=("a",), estimator="gpg"))
    assert result.gpg_alpha == 1.0
    assert result.advantages.tolist() == [0.0, 0.0]


# --------------------------------------------------------------------- conditions (Eq. 8)

def test_conditions_read_raw_gate_and_missing_gate_gives_missing():
    specs = [RewardSpec(name="correct"),
             RewardSpec(name="length", condition=RewardCondition(reward="correct", threshold=1.0)),
             RewardSpec(name="format", condition=RewardCondition(reward="length", threshold=0.5, otherwise=-1.0))]
    raw = torch.tensor([[1, 1, 1], [0, 1, 1], [NAN, 1, 1], [1, NAN, 0], [0, 0, 1]], dtype=torch.float64)
    out = apply_reward_conditions(raw, specs)
    expected = torch.tensor([[1, 1, 1], [0, 0, 1], [NAN, NAN, 1], [1, NAN, NAN], [0, 0, -1]], dtype=torch.float64)
    # format is gated on the RAW length (row 1: raw length 1 -> open even though the conditioned one is 0)
    assert torch.equal(torch.isnan(out), torch.isnan(expected))
    assert torch.equal(torch.nan_to_num(out), torch.nan_to_num(expected))


def test_conditioned_reward_flows_into_gdpo():
    # length counts only if correct >= 1: rows (1,1) (0,1) -> length becomes (1, 0): both rewards +-1/sqrt2
    specs = [RewardSpec(name="correct"),
             RewardSpec(name="length", condition=RewardCondition(reward="correct", threshold=1.0))]
    config = AlgorithmConfig(rewards=specs, group_eps=0.0, batch_norm="none")
    result = adv([[1, 1], [0, 1]], [0, 0], config)
    close(result.advantages, [S2, -S2])
    assert result.diagnostics["reward/length/gate_open_frac"] == 0.5


# --------------------------------------------------------------------- missing values under verl / NeMo-RL

def test_verl_all_missing_row_is_zero_and_left_out_of_token_whitening():
    # the scores of test_verl_singleton_raw_... plus a rollout without rewards and 4 response tokens
    config = algo(preset="verl")
    g = 0.5 / (math.sqrt(0.5) + 1e-6)
    scores = [-g, g, (0.5 + 2.0) / (1 + 1e-6)]
    lengths = [3, 1, 2, 4]
    mask = (torch.arange(4).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()
    tokens = [s for s, n in zip(scores, lengths[:3]) for _ in range(n)]
    mu, var = statistics.mean(tokens), statistics.variance(tokens)
    expected = [(s - mu) / math.sqrt(var + 1e-8) for s in scores] + [0.0]
    result = adv([[0, 1], [1, 1], [0.5, 2.0], [NAN, NAN]], [0, 0, 5, 0], config, mask)
    close(result.advantages, expected, tol=1e-5)
    assert result.token_advantages[3].eq(0).all()


def test_nemo_rl_missing_value_left_out_of_leave_one_out_stats():
    # valid values of the group: row 0 = 1, rows 2, 3 = 0 (row 1 missing).
    # row 0: others (0, 0) -> std 0 -> no division: 1 - 0 = 1
    # rows 2, 3: others (1, 0) -> mean .5, std sqrt(.5) -> -0.5 / (sqrt(.5) + 1e-6)
    m = -0.5 / (math.sqrt(0.5) + 1e-6)
    config = algo(names=("a",), preset="nemo_rl", batch_norm="none", **LOO)
    close(adv([[1], [NAN], [0], [0]], [1, 1, 1, 1], config).advantages, [1.0, 0.0, m, m])
    # with the preset's batch step: (x - mean) / unbiased std over the three rollouts with a reward
    values = [1.0, m, m]
    mean, std = statistics.fmean(values), statistics.stdev(values)
    config = algo(names=("a",), preset="nemo_rl", **LOO)
    close(adv([[1], [NAN], [0], [0]], [1, 1, 1, 1], config).advantages,
          [(1.0 - mean) / std, 0.0, (m - mean) / std, (m - mean) / std])
