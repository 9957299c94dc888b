"""GFPO on data-parallel ranks equals the single-process GFPO result BITWISE, on real gloo groups.

The trainer's path: the driver filters the whole step (`filter_groups`), shards the retained
rollouts with `shard_rollouts`, and every rank runs the distributed advantage stage on its
shard with the response mask the policy worker builds. Groups are interleaved in the batch,
so the retained rollouts of a group land on several ranks. The reference is one process: the
advantages (per rollout and per token) of the retained rollouts. GFPO gives a rejected
rollout zero advantage by leaving it out of the training batch, so each rank reports which
rollouts it received (a rollout's one-token prompt is its row in the G' batch) and the test
places the ranks' results by those tags: a rejected rollout on any rank would show up as a
nonzero advantage where the reference has 0. Harness (one spawn of 4 processes: the default
group and two 2-process subgroups) from test_advantages_dp.py.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_advantages_dp import SUBGROUPS, _free_port

from gdpo_megatron.algorithms.advantages import compute_advantages
from gdpo_megatron.algorithms.distributed_advantages import distributed_compute_advantages
from gdpo_megatron.algorithms.group_filter import DifficultyTracker, filter_groups
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardCondition, RewardSpec
from gdpo_megatron.config.group_filter import AdaptiveRetainConfig, GroupFilterConfig
from gdpo_megatron.policy.batch import build_policy_batch
from gdpo_megatron.rollout_batch import shard_rollouts

pytestmark = pytest.mark.slow

SAMPLED = 6  # G'
PROMPTS = 7


def _config(estimator: str, preset: str, metric: str, adaptive: bool) -> AlgorithmConfig:
    rewards = [RewardSpec(name="correct", weight=1.0),
               RewardSpec(name="length", weight=0.5, condition=RewardCondition(reward="correct", threshold=1.0)),
               RewardSpec(name="format", weight=2.0)]
    group_filter = (GroupFilterConfig(metric=metric, adaptive=AdaptiveRetainConfig(quantiles=[0.3, 0.7],
                                                                                    retain=[5, 3, 2], window=50))
                    if adaptive else GroupFilterConfig(metric=metric, retain=3))
    return AlgorithmConfig(rewards=rewards, estimator=estimator, preset=preset, group_filter=group_filter)


CASES = {
    "gdpo_trl_shortest": ("gdpo", "trl", "length", False),
    "gdpo_verl_efficiency_adaptive": ("gdpo", "verl", "token_efficiency", True),
    "gdpo_nemo_rl_shortest_adaptive": ("gdpo", "nemo_rl", "length", True),
    "grpo_efficiency": ("grpo", "trl", "token_efficiency", False),
    "dr_grpo_shortest": ("dr_grpo", "trl", "length", False),
    "rloo_shortest": ("rloo", "trl", "length", False),
    "gpg_shortest_adaptive": ("gpg", "trl", "length", True),
}


def step_batch(seed: int):
    gen = torch.Generator().manual_seed(seed)
    n = SAMPLED * PROMPTS
    rewards = torch.randint(0, 2, (n, 3), generator=gen).float()
    rewards[:, 2] += 0.5 * torch.rand(n, generator=gen)
    rewards[torch.rand(n, 3, generator=gen) < 0.1] = float("nan")
    group_ids = torch.arange(n) % PROMPTS  # interleaved: every group spans the batch
    lengths = torch.randint(0, 12, (n,), generator=gen)
    return rewards, group_ids, lengths


def driver(name: str, seed: int, world: int):
    """What the trainer's driver does: filter the whole step, then shard the retained rollouts."""
    config = _config(*CASES[name])
    rewards, group_ids, lengths = step_batch(seed)
    tracker = DifficultyTracker(50)
    tracker.history = [0.5, 1.0, 2.5, 3.0]  # a run already under way
    keep = filter_groups(rewards, group_ids, lengths, config, tracker).indices
    # what the trainer's StepBatch.select keeps; the prompt tags the rollout's row, the
    # response token ids stand in only for its length
    prompts = [[row] for row in keep]
    responses = [[0] * int(lengths[row]) for row in keep]
    shards = shard_rollouts(prompts, responses, rewards[keep], group_ids[keep], [[] for _ in keep], world)
    return config, rewards, group_ids, lengths, keep, shards


def _run_cases(world: int, rank: int, group) -> dict:
    results = {}
    for name in CASES:
        for seed in (1, 2):
            config, _, _, _, _, shards = driver(name, seed, world)
            shard = shards[rank]
            # the policy worker's advantage call (PolicyWorker.train_on)
            mask = build_policy_batch(shard.prompt_ids, shard.response_ids).response_mask_for_advantages()
            res = distributed_compute_advantages(shard.rewards, shard.group_ids, config, group,
                                                 local_response_mask=mask)
            results[(name, seed)] = dict(rows=[p[0] for p in shard.prompt_ids], advantages=res.advantages,
                                         token_advantages=res.token_advantages, gpg_alpha=res.gpg_alpha,
                                         diagnostics=res.diagnostics)
    return results


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=4)
    results = {4: _run_cases(4, rank, None)}
    subgroups = [dist.new_group(ranks) for ranks in SUBGROUPS]
    for ranks, subgroup in zip(SUBGROUPS, subgroups):
        if rank in ranks:
            results[2] = _run_cases(2, dist.get_rank(subgroup), subgroup)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp_group_filter")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=4, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(4)]


@pytest.mark.parametrize("world", [2, 4])
def test_gfpo_on_ranks_bitwise_equals_single_process(world, rank_results):
    members_of = [list(range(4))] if world == 4 else list(SUBGROUPS)
    for name in CASES:
        for seed in (1, 2):
            config, rewards, group_ids, lengths, keep, shards = driver(name, seed, world)
            n = rewards.shape[0]
            assert 0 < len(keep) < n
            on_shards = [set(s.group_ids.tolist()) for s in shards]
            assert any(sum(g in ids for ids in on_shards) >= 2 for g in range(PROMPTS)), "no group straddles ranks"
            # single process: the retained rollouts as one batch, scattered into the G' batch
            # (a rejected rollout has no advantage of its own: 0)
            batch = build_policy_batch([[row] for row in keep], [[0] * int(lengths[row]) for row in keep])
            retained = compute_advantages(rewards[keep], group_ids[keep], config, batch.response_mask_for_advantages())
            width = retained.token_advantages.shape[1]
            reference = torch.zeros(n, dtype=torch.float32)
            reference[keep] = retained.advantages
            token_reference = torch.zeros(n, width, dtype=torch.float32)
            token_reference[keep] = retained.token_advantages
            assert reference.abs().sum() > 0
            plain_mask = build_policy_batch([[0]] * n, [[0] * int(v) for v in lengths]).response_mask_for_advantages()
            plain = compute_advantages(rewards, group_ids, config, plain_mask)
            assert not torch.equal(plain.advantages[keep], retained.advantages)  # the filter changes the statistics
            for members in members_of:
                got = [rank_results[g][world][(name, seed)] for g in members]
                rows = [row for r in got for row in r["rows"]]
                # every retained rollout on exactly one rank, no rejected one on any
                assert sorted(rows) == keep, (name, seed, members)
                # placed by the rows the ranks received, not by `keep`
                on_ranks = torch.zeros(n, dtype=torch.float32)
                on_ranks[rows] = torch.cat([r["advantages"] for r in got])
                assert torch.equal(on_ranks, reference), (name, seed, members)
                # the per-token advantages the policy trains on; a rank's are as wide as its
                # longest response, the columns past it are 0 in the reference
                token_on_ranks = torch.zeros(n, width, dtype=torch.float32)
                for r in got:
                    token_on_ranks[r["rows"], :r["token_advantages"].shape[1]] = r["token_advantages"]
                assert torch.equal(token_on_ranks, token_reference), (name, seed, members)
                for r, g in zip(got, members):
                    assert r["gpg_alpha"] == retained.gpg_alpha
                    assert r["diagnostics"] == retained.diagnostics, (name, seed, g)
