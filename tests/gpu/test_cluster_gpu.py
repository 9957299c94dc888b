"""GPU check of placement, device selection and rendezvous: NCCL ranks as Ray actors on real devices.

Part of the GPU smoke suite; skipped without CUDA (it has not run yet: no GPU was available
while it was written). Each rank is placed by the same plan the trainer uses, selects its
device from what Ray assigned it (ordinal 0 of its CUDA_VISIBLE_DEVICES, never its rank),
joins NCCL at global rank 0's node address with a port free there, and all-reduces a
tensor on its GPU: the sum must equal 0 + 1 + ... + (world - 1) on every rank.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2,
    reason=f"needs 2+ CUDA devices (one NCCL rank per GPU), this host has {torch.cuda.device_count()}")]

RECIPE = "recipes/tiny/synthetic-gdpo-1n2c.yaml"


def test_nccl_ranks_under_ray_select_their_assigned_device(repo_root, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed")

    from gdpo_megatron.config import load_recipe
    from gdpo_megatron.orchestration.cluster import RayCluster, placement_for

    gpus = torch.cuda.device_count()

    @ray.remote
    class Rank:
        def __init__(self, rank: int, world: int) -> None:
            from gdpo_megatron.orchestration.devices import current_placement

            self.rank, self.world, self.placement = rank, world, current_placement()

        def address(self):
            from gdpo_megatron.orchestration.cluster import free_port

            return self.placement.node_ip, free_port(self.placement.node_ip)

        def run(self, host: str, port: int):
            import os

            import torch.distributed as dist

            from gdpo_megatron.config.policy import ParallelConfig
            from gdpo_megatron.distributed.setup import init_distributed

            os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world), MASTER_ADDR=host,
                              MASTER_PORT=str(port), LOCAL_RANK=str(self.placement.device_index))
            state = init_distributed(ParallelConfig())
            value = torch.tensor([float(self.rank)], device="cuda")
            dist.all_reduce(value)
            return {"backend": state.backend, "device": torch.cuda.current_device(), "sum": value.item(),
                    **self.placement.to_dict()}

    recipe = load_recipe(repo_root / RECIPE, ["cluster.nodes=1", f"cluster.gpus_per_node={gpus}",
                                              "cluster.gpu_type=H100-80GB", "generation.colocated=true",
                                              f"generation.num_engines={gpus}"])
    with RayCluster(tmp_path / "ray", num_gpus=gpus, log_to_driver=False):
        plan = placement_for(recipe, timeout_s=120)
        world = plan.policy_world_size
        ranks = [Rank.options(**plan.policy_options(r)).remote(r, world) for r in range(world)]
        host, port = ray.get(ranks[0].address.remote())
        results = ray.get([r.run.remote(host, port) for r in ranks])
        plan.remove()
    assert len({tuple(r["gpu_ids"]) for r in results}) == world  # one GPU per rank
    for result in results:
        assert result["backend"] == "nccl" and result["device"] == 0 and result["device_index"] == 0
        assert result["sum"] == sum(range(world))
