"""The group filter stage (GFPO): golden values by hand, retained-only statistics, run-state resume."""

import math
import random
from pathlib import Path

import pytest
import torch

from gdpo_megatron.algorithms.advantages import ESTIMATORS, PRESETS, compute_advantages
from gdpo_megatron.algorithms.group_filter import (DifficultyTracker, difficulty_buckets, filter_groups,
                                                   top_k_in_groups)
from gdpo_megatron.algorithms.segments import index_groups
from gdpo_megatron.checkpointing import RunState, read_run_state, write_run_state
from gdpo_megatron.config import ConfigError, load_recipe
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardCondition, RewardSpec
from gdpo_megatron.config.group_filter import AdaptiveRetainConfig, GroupFilterConfig
from gdpo_megatron.planner import make_plan
from gdpo_megatron.rollout_batch import shard_rollouts

NAN = float("nan")
ROOT = Path(__file__).resolve().parents[2]


def algo(group_filter: GroupFilterConfig, names=("a", "b"), weights=(1.0, 1.0), **kwargs) -> AlgorithmConfig:
    config = AlgorithmConfig(rewards=[RewardSpec(name=n, weight=w) for n, w in zip(names, weights)],
                             group_filter=group_filter, **kwargs)
    config.group_filter.validate()
    config.validate()
    return config


def run(rewards, groups, lengths, config, tracker=None):
    return filter_groups(torch.tensor(rewards, dtype=torch.float32), torch.tensor(groups),
                         torch.tensor(lengths), config, tracker)


# --------------------------------------------------------------------- metrics, by hand

def test_length_keeps_the_shortest_and_breaks_ties_by_batch_order():
    # groups 7 and 3 interleaved (ids need not be contiguous or sorted)
    groups = [7, 3, 7, 3, 7, 3, 7, 3]
    lengths = [5, 4, 3, 4, 3, 2, 7, 4]
    # group 7: rows 0,2,4,6 with lengths 5,3,3,7 -> k=2 keeps rows 2 and 4 (the two 3s)
    # group 3: rows 1,3,5,7 with lengths 4,4,2,4 -> row 5 (2), then the tie 4,4,4 goes to row 1
    result = run([[1, 0]] * 8, groups, lengths, algo(GroupFilterConfig(metric="length", retain=2)))
    assert result.indices == [1, 2, 4, 5]
    assert result.retained_per_group.tolist() == [2, 2]  # groups in sorted id order: 3, 7
    assert result.metrics["gfpo/retained_frac"] == 0.5
    assert result.metrics["gfpo/response_len/retained_mean"] == (4 + 3 + 3 + 2) / 4


def test_token_efficiency_is_the_weighted_conditioned_reward_per_token():
    specs = [RewardSpec(name="correct", weight=1.0),
             RewardSpec(name="short", weight=0.5, condition=RewardCondition(reward="correct", threshold=1.0)),
             RewardSpec(name="format", weight=2.0)]
    config = AlgorithmConfig(rewards=specs, group_filter=GroupFilterConfig(metric="token_efficiency", retain=2))
    rewards = [[1, 1, 0],      # 1 + 0.5        = 1.5 over 3 tokens -> 0.5
               [0, 1, 1],      # gate closed: 0 + 0 + 2 = 2 over 8  -> 0.25
               [1, 0, 1],      # 1 + 0 + 2      = 3 over 4          -> 0.75
               [NAN, NAN, NAN],  # no reward: NaN score, ranked last
               [1, 1, 1]]      # 3.5 over 0 tokens (counted as 1)  -> 3.5
    result = run(rewards, [0] * 5, [3, 8, 4, 2, 0], config)
    assert result.indices == [2, 4]
    # only `correct` and `format` in the numerator: 1/3, 2/8, 3/4, NaN, 3/1 -> rows 2 and 4 again;
    # only `short`: 0.5/3, 0 (gate closed), 0/4, NaN, 0.5/1 -> rows 0 and 4
    config.group_filter.efficiency_rewards = ["short"]
    assert run(rewards, [0] * 5, [3, 8, 4, 2, 0], config).indices == [0, 4]
    kept = run(rewards, [0] * 5, [3, 8, 4, 2, 0], config)
    assert kept.metrics["gfpo/reward/short/retained_mean"] == 1.0
    assert kept.metrics["gfpo/reward/combined/retained_mean"] == (1.5 + 3.5) / 2


def test_top_k_equals_a_per_group_brute_force_on_tied_scores():
    gen = random.Random(3)
    for _ in range(20):
        n = gen.randint(1, 40)
        ids = [gen.randint(0, 6) * 5 for _ in range(n)]
        scores = [gen.choice([0.0, 1.0, 2.0, NAN, -1.0]) for _ in range(n)]
        k = {g: gen.randint(0, 5) for g in set(ids)}
        expected = set()
        for g in set(ids):
            rows = sorted((r for r in range(n) if ids[r] == g),
                          key=lambda r: (-(scores[r] if not math.isnan(scores[r]) else -math.inf), r))
            expected.update(rows[:k[g]])
        groups = index_groups(torch.tensor(ids))
        keep = torch.tensor([k[g] for g in sorted(set(ids))])
        got = top_k_in_groups(torch.tensor(scores, dtype=torch.float64), groups, keep)
        assert set(got.nonzero().squeeze(1).tolist()) == expected


# --------------------------------------------------------------------- adaptive difficulty, by hand

def test_adaptive_buckets_by_running_quantiles_and_harder_prompts_keep_more():
    config = algo(GroupFilterConfig(metric="length", adaptive=AdaptiveRetainConfig(
        quantiles=[0.25, 0.5, 0.75], retain=[4, 3, 2, 1], window=100)))
    tracker = DifficultyTracker(100)
    tracker.history = [0.0, 1.0, 2.0, 3.0]  # earlier steps (combined reward a + b)
    # this step: 5 groups of 4 rollouts; combined mean rewards 0.0, 1.5, 2.0, 2.0 and none
    rewards, groups = [], []
    for g, rows in enumerate([[[0, 0]] * 4, [[1, 1], [1, 0], [1, 1], [0, 1]], [[1, 1]] * 4,
                              [[1, 1], [2, 0], [0, 2], [1, 1]], [[NAN, NAN]] * 4]):
        rewards += rows
        groups += [g] * 4
    lengths = list(range(20, 0, -1))  # later rows shorter: the filter keeps each group's last rows
    result = run(rewards, groups, lengths, config, tracker)
    # history after the update: 0,1,2,3, 0,1.5,2,2 (NaN left out) -> sorted 0,0,1,1.5,2,2,2,3;
    # linear quantiles at positions 7q = 1.75, 3.5, 5.25 -> 0 + .75*1 = 0.75, 1.5 + .5*.5 = 1.75, 2
    assert tracker.history == [0.0, 1.0, 2.0, 3.0, 0.0, 1.5, 2.0, 2.0]
    assert result.edges.tolist() == pytest.approx([0.75, 1.75, 2.0], abs=1e-15)
    # 0.0 <= 0.75 -> bucket 0; 0.75 < 1.5 <= 1.75 -> 1; 2.0 equals the top edge -> the harder bucket 2;
    # no reward -> the easiest bucket 3
    assert result.bucket.tolist() == [0, 1, 2, 2, 3]
    assert result.retained_per_group.tolist() == [4, 3, 2, 2, 1]
    assert result.indices == [0, 1, 2, 3, 5, 6, 7, 10, 11, 14, 15, 19]
    m = result.metrics
    assert (m["gfpo/bucket0/groups"], m["gfpo/bucket1/groups"], m["gfpo/bucket2/groups"], m["gfpo/bucket3/groups"]) \
        == (1.0, 1.0, 2.0, 1.0)
    assert (m["gfpo/bucket0/k"], m["gfpo/bucket1/k"], m["gfpo/bucket2/k"], m["gfpo/bucket3/k"]) == (4.0, 3.0, 2.0, 1.0)
    assert (m["gfpo/difficulty/q25"], m["gfpo/difficulty/q75"], m["gfpo/difficulty/window"]) == (0.75, 2.0, 8.0)


def test_adaptive_k_is_clipped_to_the_group_and_empty_statistics_mean_hardest():
    assert difficulty_buckets(torch.tensor([0.3, NAN]), None, 3).tolist() == [0, 2]
    config = algo(GroupFilterConfig(metric="length", adaptive=AdaptiveRetainConfig(quantiles=[0.5], retain=[5, 1])))
    result = run([[1, 0], [0, 0]], [0, 0], [3, 4], config, DifficultyTracker(10))
    # one group, mean 0.5 = the median of its own history -> the harder bucket: k = 5 clipped to 2
    assert result.bucket.tolist() == [0] and result.indices == [0, 1]
    assert result.metrics["gfpo/bucket0/k"] == 2.0 and result.metrics["gfpo/bucket1/k"] == 1.0


def test_tracker_window_keeps_the_newest_and_resume_is_exact(tmp_path):
    config = algo(GroupFilterConfig(metric="token_efficiency", adaptive=AdaptiveRetainConfig(
        quantiles=[1 / 3, 2 / 3], retain=[4, 3, 1], window=7)))
    gen = torch.Generator().manual_seed(0)
    steps = [(torch.rand(24, 2, generator=gen) * 3, torch.randint(1, 30, (24,), generator=gen)) for _ in range(6)]
    groups = torch.arange(24) // 4

    def decide(tracker, step):
        rewards, lengths = steps[step]
        return filter_groups(rewards, groups, lengths, config, tracker).keep

    uninterrupted = DifficultyTracker(7)
    expected = [decide(uninterrupted, s) for s in range(6)]
    assert len(uninterrupted.history) == 7

    first = DifficultyTracker(7)
    for s in range(3):
        decide(first, s)
    write_run_state(tmp_path, RunState(step=3, config_hash="h", extra={"group_filter_difficulty": first.state_dict()}))
    state, _ = read_run_state(tmp_path)
    resumed = DifficultyTracker(7)
    resumed.load_state_dict(state.extra["group_filter_difficulty"])
    assert resumed.history == first.history  # floats round-trip through JSON exactly
    for s in range(3, 6):
        assert torch.equal(decide(resumed, s), expected[s])
    with pytest.raises(ValueError, match="window of 7"):
        DifficultyTracker(8).load_state_dict(first.state_dict())


# --------------------------------------------------------------------- composition with the estimators

def test_gdpo_normalizes_over_the_retained_rollouts_only():
    config = algo(GroupFilterConfig(metric="length", retain=2), group_eps=0.0, batch_norm="none")
    rewards = [[1, 1], [0, 1], [1, 1], [1, 1]]
    result = run(rewards, [0] * 4, [9, 1, 2, 8], config)
    assert result.indices == [1, 2]
    kept = torch.tensor(rewards, dtype=torch.float32)[result.keep]
    adv = compute_advantages(kept, torch.zeros(2, dtype=torch.long), config).advantages
    # retained a = (0, 1): -+0.5 / std(unbiased) = -+0.5/sqrt(0.5) = -+1/sqrt2; retained b = (1, 1): 0
    s = 1 / math.sqrt(2.0)
    assert adv.tolist() == pytest.approx([-s, s], abs=1e-7)
    # over all four rollouts a = (1, 0, 1, 1) has mean 0.75 and std 0.5: rows 1, 2 would get -1.5, 0.5
    full = compute_advantages(torch.tensor(rewards, dtype=torch.float32), torch.zeros(4, dtype=torch.long), config)
    assert full.advantages[1:3].tolist() == pytest.approx([-1.5, 0.5], abs=1e-7)


def test_gpg_alpha_counts_only_the_retained_rollouts():
    config = algo(GroupFilterConfig(metric="length", retain=2), estimator="gpg")
    # group 0 keeps two rollouts with equal totals (degenerate), group 1 two different ones
    rewards = [[1, 0], [1, 0], [0, 0], [0, 0], [1, 1], [0, 0], [1, 1], [0, 1]]
    result = run(rewards, [0, 0, 0, 0, 1, 1, 1, 1], [1, 2, 9, 9, 1, 2, 9, 9], config)
    assert result.indices == [0, 1, 4, 5]
    kept = torch.tensor(rewards, dtype=torch.float32)[result.keep]
    alpha = compute_advantages(kept, torch.tensor([0, 0, 1, 1]), config).gpg_alpha
    assert alpha == 4 / (4 - 2)  # B = 4 retained, M = 2 (group 0); over all 8 rollouts it would be 8/8


# Estimators that sum the rewards before normalizing. Two groups of four, the three shortest
# kept (lengths: group 0 rejects row 3, group 1 row 5).
# Combined rewards (a + b): group 0 (4, 0, 2 | rejected 3), group 1 (1, 3, 2 | rejected 0).
SUM_REWARDS = [[2, 2], [0, 0], [1, 1], [1, 2], [1, 0], [0, 0], [1, 2], [2, 0]]
SUM_LENGTHS = [4, 1, 3, 9, 2, 7, 2, 5]
SUM_KEPT = [0, 1, 2, 4, 6, 7]


@pytest.mark.parametrize("estimator, retained, row0_over_all", [
    # group 0 kept (4, 0, 2): mean 2, centered (2, -2, 0), unbiased std sqrt(8/2) = 2 -> (1, -1, 0);
    # group 1 kept (1, 3, 2): mean 2, centered (-1, 1, 0), std 1 -> (-1, 1, 0).
    # Over all of group 0, (4, 0, 2, 3): mean 2.25, std sqrt(8.75/3), row 0 1.75 / std = sqrt(1.05).
    ("grpo", [1, -1, 0, -1, 1, 0], math.sqrt(1.05)),
    # r - kept mean: (2, -2, 0) and (-1, 1, 0); over all of group 0 row 0 is 4 - 2.25 = 1.75.
    ("dr_grpo", [2, -2, 0, -1, 1, 0], 1.75),
    # r - mean of the OTHER kept rollouts: 4 - (0+2)/2 = 3, 0 - (4+2)/2 = -3, 2 - (4+0)/2 = 0;
    # 1 - (3+2)/2 = -1.5, 3 - (1+2)/2 = 1.5, 2 - (1+3)/2 = 0; over all: 4 - (0+2+3)/3 = 7/3.
    ("rloo", [3, -3, 0, -1.5, 1.5, 0], 7 / 3),
])
def test_sum_estimators_use_the_retained_rollouts_only(estimator, retained, row0_over_all):
    # group_eps 0: GRPO divides by the std alone (Dr.GRPO and RLOO have no std division)
    config = algo(GroupFilterConfig(metric="length", retain=3), estimator=estimator, group_eps=0.0)
    result = run(SUM_REWARDS, [0] * 4 + [1] * 4, SUM_LENGTHS, config)
    assert result.indices == SUM_KEPT
    rewards, groups = torch.tensor(SUM_REWARDS, dtype=torch.float32), torch.tensor([0] * 4 + [1] * 4)
    adv = compute_advantages(rewards[SUM_KEPT], groups[SUM_KEPT], config).advantages
    assert adv.tolist() == pytest.approx(retained, abs=1e-6)
    full = compute_advantages(rewards, groups, config).advantages
    assert float(full[0]) == pytest.approx(row0_over_all, abs=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("estimator", ESTIMATORS.names())
def test_keeping_every_rollout_equals_the_plain_estimator_bitwise(estimator, preset):
    gen = torch.Generator().manual_seed(7)
    n, sampled = 24, 6
    rewards = torch.randint(0, 3, (n, 2), generator=gen).float()
    rewards[torch.rand(n, 2, generator=gen) < 0.1] = NAN
    group_ids = torch.randperm(n, generator=gen) % (n // sampled)
    lengths = torch.randint(0, 20, (n,), generator=gen)
    mask = (torch.arange(20).unsqueeze(0) < lengths.unsqueeze(1)).float()
    for group_filter in (GroupFilterConfig(metric="length", retain=sampled),
                         GroupFilterConfig(metric="token_efficiency", adaptive=AdaptiveRetainConfig(
                             quantiles=[0.5], retain=[sampled, sampled]))):
        config = algo(group_filter, estimator=estimator, preset=preset)
        result = filter_groups(rewards, group_ids, lengths, config, DifficultyTracker(64))
        assert result.indices == list(range(n))
        keep = result.indices
        filtered = compute_advantages(rewards[keep], group_ids[keep], config, mask[keep])
        plain = compute_advantages(rewards, group_ids, config, mask)
        assert torch.equal(filtered.advantages, plain.advantages)
        assert torch.equal(filtered.token_advantages, plain.token_advantages)
        assert filtered.gpg_alpha == plain.gpg_alpha and filtered.diagnostics == plain.diagnostics


# --------------------------------------------------------------------- the trainer hook and the batch

def test_rejected_rollouts_are_absent_from_the_training_shards(tmp_path):
    from gdpo_megatron.trainer import StepBatch, Trainer

    recipe = load_recipe(ROOT / "recipes/tiny/synthetic-gdpo-gfpo-1n2c.yaml",
                         ["trainer.rollouts_per_prompt=4", "algorithm.group_filter.retain=2"])
    trainer = Trainer(recipe, tmp_path / "run", log=lambda _: None)
    trainer.difficulty = None
    lengths = [5, 1, 7, 2, 3, 3, 9, 1]
    batch = StepBatch(records=[{"i": i} for i in range(8)], prompt_ids=[[i] for i in range(8)],
                      response_ids=[[100 + i] * n for i, n in enumerate(lengths)], texts=[str(i) for i in range(8)],
                      engine_logprobs=[[0.0] * n for n in lengths], finish_reasons=["stop"] * 8,
                      group_ids=[0, 0, 0, 0, 1, 1, 1, 1], rewards=torch.rand(8, 3))
    metrics = {}
    trained = trainer._filter_groups(batch, metrics)
    # group 0 keeps rows 1 (1 token) and 3 (2); group 1 keeps 7 (1) and 4 (3, before its tie 5)
    assert [r["i"] for r in trained.records] == [1, 3, 4, 7]
    assert torch.equal(trained.rewards, batch.rewards[[1, 3, 4, 7]])
    shards = shard_rollouts(trained.prompt_ids, trained.response_ids, trained.rewards,
                            torch.tensor(trained.group_ids), trained.engine_logprobs, 2)
    shipped = [ids[0] for shard in shards for ids in shard.response_ids]
    assert shipped == [101, 103, 104, 107]  # the rejected rollouts never reach a policy rank
    assert metrics["gfpo/retained_frac"] == 0.5


def test_config_errors_name_the_key():
    tiny = ROOT / "recipes/tiny/synthetic-gdpo-gfpo-1n2c.yaml"
    for overrides, message in [
        (["algorithm.group_filter.retain=17"], "trainer.rollouts_per_prompt"),
        (["algorithm.group_filter.metric=lenght"], "did you mean"),
        (["algorithm.group_filter.adaptive={quantiles: [0.5], retain: [2, 1]}"], "exactly one of retain"),
        (["algorithm.group_filter.retain=null", "algorithm.group_filter.adaptive={retain: [2, 1]}"],
         "retain needs 4 entries"),
        (["algorithm.group_filter.metric=token_efficiency", "algorithm.group_filter.efficiency_rewards=[corect]"],
         "no reward named 'corect'"),
        (["algorithm.group_filter.efficiency_rewards=[correct]"], "only used by metric token_efficiency"),
        (["trainer.mini_batches_per_step=129"], "mini_batches_per_step"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_recipe(tiny, overrides)


def test_plan_generates_g_prime_and_trains_on_k():
    plan = make_plan(load_recipe(ROOT / "recipes/tiny/synthetic-gdpo-gfpo-1n2c.yaml"))
    assert (plan.layout.generated_per_step, plan.layout.samples_per_step) == (16 * 16, 16 * 8)
    math_plan = make_plan(load_recipe(ROOT / "recipes/deepseek-r1-distill-qwen-1.5b/math-gdpo-gfpo-1n8g.yaml"))
    assert (math_plan.layout.generated_per_step, math_plan.layout.samples_per_step) == (512 * 16, 512 * 8)
    base = make_plan(load_recipe(ROOT / "recipes/deepseek-r1-distill-qwen-1.5b/math-gdpo-1n8g.yaml"))
    assert base.layout.generated_per_step == base.layout.samples_per_step == 512 * 16
    assert math_plan.layout.microbatches * 2 == base.layout.microbatches
