"""One policy rank: a Ray actor that owns a megatron-core model shard.

All ranks of the torch.distributed group that megatron-core uses are actors of this
class; the driver sends each data-parallel rank its rollout shard (every TP/PP rank of
a DP rank gets the same shard) and the advantage stage runs here, over the DP group.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from gdpo_megatron.orchestration.refit import RefitSender
from gdpo_megatron.rollout_batch import RolloutShard


def cpu_threads(world_size: int, nodes: int) -> int:
    """Intra-op threads of one policy rank on a CPU host: OMP_NUM_THREADS shared by its node's policy ranks.

    Generation and training take turns within a step, so while the policy updates, its ranks
    have the node's threads to themselves (with trainer.overlap_generation a CPU engine keeps one
    thread beside them, see GenerationWorker). Ray sets OMP_NUM_THREADS to the actor's CPU count
    (1) unless the user exported it.
    """
    per_node = -(-world_size // max(1, nodes))
    return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")) // per_node)


class PolicyWorker(RefitSender):  # RefitSender: export_weights* for every refit transport
    """Created without touching torch.distributed; `setup` joins the group once rank 0's address is known."""

    def __init__(self, recipe_data: dict, rank: int, world_size: int) -> None:
        from gdpo_megatron.config.recipe import RecipeConfig
        from gdpo_megatron.config.schema import build
        from gdpo_megatron.orchestration.devices import current_placement

        self.rank = rank
        self.world_size = world_size
        self.recipe = build(RecipeConfig, recipe_data)
        torch.set_num_threads(1 if torch.cuda.is_available() else cpu_threads(world_size, self.recipe.cluster.nodes))
        self.placement = current_placement()
        self.policy = None

    def where(self) -> dict:
        """Node, GPU ids and the device index this rank selects (as Ray assigned them)."""
        return {"rank": self.rank, **self.placement.to_dict()}

    def rendezvous_address(self) -> tuple[str, int]:
        """(this node's address, a port free on it): asked of global rank 0 only."""
        from gdpo_megatron.orchestration.cluster import free_port

        return self.placement.node_ip, free_port(self.placement.node_ip)

    def setup(self, master_addr: str, master_port: int) -> dict:
        """Join the torch.distributed group at rank 0's address, build the model; returns `where()`."""
        # LOCAL_RANK is the CUDA ordinal among this actor's visible devices (init_distributed
        # selects it); with Ray that is the position of the assigned GPU, not the global rank.
        local = self.placement.device_index if self.placement.device_index is not None else 0
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK=str(local),
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        from gdpo_megatron.distributed.setup import init_distributed
        from gdpo_megatron.megatron_policy import MegatronPolicy

        self.parallel_state = init_distributed(self.recipe.policy.parallel)
        self.policy = MegatronPolicy(self.recipe)
        return self.where()

    def layout(self) -> dict[str, int]:
        """This rank's place in the layout (the driver routes shards by dp_rank)."""
        from megatron.core import parallel_state as mpu

        return {"rank": self.rank, "dp_rank": mpu.get_data_parallel_rank(), "dp_size": mpu.get_data_parallel_world_size(),
                "tp_rank": mpu.get_tensor_model_parallel_rank(), "pp_rank": mpu.get_pipeline_model_parallel_rank()}

    def train_on(self, shard: RolloutShard, check_mismatch: bool = True) -> dict[str, float]:
        from megatron.core import parallel_state as mpu

        from gdpo_megatron.algorithms.distributed_advantages import distributed_compute_advantages
        from gdpo_megatron.generation.mismatch import generation_mismatch
        from gdpo_megatron.metrics import rss_gb
        from gdpo_megatron.policy.batch import build_policy_batch

        timings: dict[str, float] = {}
        start = time.perf_counter()
        batch = build_policy_batch(shard.prompt_ids, shard.response_ids)
        result = distributed_compute_advantages(
            shard.rewards, shard.group_ids, self.recipe.algorithm,
            group=mpu.get_data_parallel_group(), local_response_mask=batch.response_mask_for_advantages(),
        )
        batch.set_advantages(result.advantages, result.token_advantages)
        timings["time/advantage"] = time.perf_counter() - start
        start = time.perf_counter()
        mini_batches, epochs = self.recipe.trainer.mini_batches_per_step, self.recipe.trainer.ppo_epochs
        excluded = shard.trainable is not None and not bool(torch.as_tensor(shard.trainable).all())
        # With one update per step the training forward yields the old logprobs (MegatronPolicy.train).
        # Its micro-batches are cut to the length of the rows that enter the loss, so when some rows
        # are excluded and the mismatch (which measures every row) is due, a separate pass is needed.
        if not self.policy.single_update(mini_batches, epochs) or (check_mismatch and excluded):
            batch.old_logprobs = self.policy.compute_logprobs(batch)
        if self.policy.uses_reference:
            batch.ref_logprobs = self.policy.compute_reference_logprobs(batch)
        timings["time/logprobs"] = time.perf_counter() - start
        start = time.perf_counter()
        metrics: dict[str, Any] = dict(result.diagnostics)
        # Rollouts the trainer excludes (overlong filtering) leave the loss and its token and
        # sequence counts; they stay in `batch` for the mismatch measurement below.
        loss_batch = batch.with_loss_rows(shard.trainable)
        trained = self.policy.train(loss_batch, num_mini_batches=mini_batches, epochs=epochs,
                                    gpg_alpha=result.gpg_alpha)
        if batch.old_logprobs is None:
            batch.old_logprobs = loss_batch.old_logprobs  # the training forward's; complete when no row was excluded
        timings["time/policy_update"] = time.perf_counter() - start
        metrics.update({f"train/{name}": value for name, value in trained.items()})
        metrics.update(timings)
        metrics["memory/policy_rss_gb"] = rss_gb()
        if torch.cuda.is_available():
            # Hand the activations' cached blocks back to the driver: colocated engines wake into
            # that memory (the planner counts only the policy's resident state during generation).
            torch.cuda.empty_cache()
        # One report per data-parallel shard: its TP/PP ranks hold the same rollouts and logprobs.
        shard_lead = mpu.get_tensor_model_parallel_rank() == 0 and mpu.get_pipeline_model_parallel_rank() == 0
        if check_mismatch and shard.engine_logprobs and shard_lead:
            engine = batch.pad_response_values(shard.engine_logprobs)
            for key, value in generation_mismatch(engine, batch.old_logprobs, batch.response_mask).items():
                metrics[f"mismatch/{key}"] = value
        return metrics

    def save_hf(self, path: str) -> None:
        """Collective: the current weights as an HF checkpoint (global rank 0 writes)."""
        from gdpo_megatron.conversion.exporter import save_hf_checkpoint

        save_hf_checkpoint(self.policy.model, self.recipe.policy, path)

    def save_checkpoint(self, path: str) -> None:
        self.policy.save_checkpoint(path)

    def load_checkpoint(self, path: str) -> None:
        self.policy.load_checkpoint(path)

    def ping(self) -> int:
        return self.rank
