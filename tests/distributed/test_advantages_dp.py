"""The distributed advantage stage equals the single-process one BITWISE, on real gloo groups.

One spawn of 4 processes runs every case (process start-up dominates the cost): the default
group of 4 and two 2-process subgroups. Each rank saves its local results and the test process compares them with `compute_advantages` on
the concatenated batch (masks zero-padded to the widest shard).
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gdpo_megatron.algorithms.advantages import compute_advantages
from gdpo_megatron.algorithms.distributed_advantages import distributed_compute_advantages
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardCondition, RewardSpec


def _config(**kwargs) -> AlgorithmConfig:
    rewards = [RewardSpec(name="correct", weight=1.0),
               RewardSpec(name="length", weight=0.5, condition=RewardCondition(reward="correct", threshold=1.0)),
               RewardSpec(name="format", weight=2.0)]
    return AlgorithmConfig(rewards=rewards, **kwargs)


CONFIGS = {
    "gdpo_trl": dict(),
    "gdpo_verl_token": dict(preset="verl"),
    "gdpo_nemo_rl": dict(preset="nemo_rl"),
    "grpo_trl": dict(estimator="grpo"),
    "gpg": dict(estimator="gpg"),
    "rloo": dict(estimator="rloo"),
}


def build_cases(world: int) -> list[dict]:
    """Deterministic shards: uneven sizes (one rank may be empty), groups straddling ranks."""
    gen = torch.Generator().manual_seed(100 + world)
    shardings = [[5, 9, 1, 13][:world], [0, 17, 6, 4][:world] if world == 4 else [1, 20]]
    cases = []
    for sizes in shardings:
        n = sum(sizes)
        rewards = torch.randint(0, 2, (n, 3), generator=gen).float()
        rewards[:, 2] += 0.5 * torch.rand(n, generator=gen)
        rewards[torch.rand(n, 3, generator=gen) < 0.1] = float("nan")
        rewards[3] = float("nan")  # one rollout without any reward
        # groups of 4 in interleaved order, so every group has members on several ranks
        group_ids = torch.arange(n) % max(1, n // 4)
        widths = [int(w) for w in torch.randint(1, 9, (world,), generator=gen)]
        lengths = torch.randint(0, 9, (n,), generator=gen)
        for name, kwargs in CONFIGS.items():
            cases.append(dict(name=f"{name}-{sizes}", config=kwargs, rewards=rewards, group_ids=group_ids,
                              sizes=sizes, widths=widths, lengths=lengths))
    return cases


def _shard_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return (torch.arange(width).unsqueeze(0) < lengths.clamp(max=width).unsqueeze(1)).float()


def _run_cases(world: int, rank: int, group) -> dict:
    results = {}
    for case in build_cases(world):
        start = sum(case["sizes"][:rank])
        stop = start + case["sizes"][rank]
        mask = _shard_mask(case["lengths"][start:stop], case["widths"][rank])
        res = distributed_compute_advantages(case["rewards"][start:stop], case["group_ids"][start:stop],
                                             _config(**case["config"]), group, local_response_mask=mask)
        results[case["name"]] = dict(advantages=res.advantages, token_advantages=res.token_advantages,
                                     gpg_alpha=res.gpg_alpha, diagnostics=res.diagnostics)
    return results


# 4 processes: the world-4 cases on the default group, and the world-2 cases on two 2-process
# subgroups with non-adjacent global ranks ({0, 2} and {1, 3}), so the rank order that
# matters is the one inside the given group. One spawn keeps the process start-up cost once.
SUBGROUPS = ([0, 2], [1, 3])


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=4)
    results = {4: _run_cases(4, rank, None)}
    subgroups = [dist.new_group(ranks) for ranks in SUBGROUPS]  # every rank creates every group
    for ranks, subgroup in zip(SUBGROUPS, subgroups):
        if rank in ranks:
            assert dist.get_world_size(subgroup) == 2
            results[2] = _run_cases(2, dist.get_rank(subgroup), subgroup)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp_advantages")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=4, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(4)]


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_advantages_bitwise_equal_single_process(world, rank_results):
    groups = [list(range(4))] if world == 4 else list(SUBGROUPS)
    cases = build_cases(world)
    assert len(cases) == 2 * len(CONFIGS)
    for case in cases:
        widest = max(case["widths"])
        full_mask = torch.cat([
            torch.nn.functional.pad(_shard_mask(case["lengths"][sum(case["sizes"][:r]):sum(case["sizes"][:r + 1])],
                                                case["widths"][r]), (0, widest - case["widths"][r]))
            for r in range(world)])
        reference = compute_advantages(case["rewards"], case["group_ids"], _config(**case["config"]), full_mask)
        assert torch.isfinite(reference.advantages).all()
        assert reference.advantages.abs().sum() > 0, case["name"]
        for members in groups:
            for r, global_rank in enumerate(members):
                got = rank_results[global_rank][world][case["name"]]
                start = sum(case["sizes"][:r])
                stop = start + case["sizes"][r]
                where = (case["name"], members, r)
                assert torch.equal(got["advantages"], reference.advantages[start:stop]), where
                assert got["token_advantages"].shape == (case["sizes"][r], case["widths"][r])
                assert torch.equal(got["token_advantages"],
                                   reference.token_advantages[start:stop, :case["widths"][r]]), where
                assert got["gpg_alpha"] == reference.gpg_alpha
                assert got["diagnostics"] == reference.diagnostics, where
