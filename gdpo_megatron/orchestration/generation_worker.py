"""One rollout engine as a Ray actor: generation, weight refit from object-store buckets, sleep/wake.

The trainer starts one such actor per engine (`engine-<i>`), each in the bundle(s) the
placement plan gives it. With tensor_parallel > 1 on GPUs the actor holds no GPU itself;
`vllm_env` tells vLLM's Ray executor which of the run's bundles its workers go to.
"""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from gdpo_megatron.orchestration.refit import RefitReceiver


class GenerationWorker(RefitReceiver):  # RefitReceiver: collective / CUDA IPC receivers
    def __init__(self, recipe_data: dict, model_path: str, vllm_env: dict | None = None) -> None:
        from gdpo_megatron.config.recipe import RecipeConfig
        from gdpo_megatron.config.schema import build

        self.recipe = build(RecipeConfig, recipe_data)
        if self.recipe.trainer.overlap_generation and self.recipe.cluster.is_cpu:
            # A CPU engine that generates while the policy trains shares the policy's cores: one
            # intra-op thread. CPU decoding of the small models a CPU host runs is bound by per-token
            # overhead more than by matmuls (bench_e2e: 0.15 s at one thread, 0.12 s at two), and
            # two thread pools on the same cores slow both phases down (generation: 0.68 s).
            os.environ["OMP_NUM_THREADS"] = "1"  # also read by the engine's own process
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        # vLLM logs several INFO lines per refit and warns that RoPE buffers are not in the
        # weight stream (they are computed, not loaded); both drown the progress line.
        # Export VLLM_LOGGING_LEVEL=INFO to see everything.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.update(vllm_env or {})
        from gdpo_megatron.generation import create_backend
        from gdpo_megatron.orchestration.devices import current_placement

        self.placement = current_placement()
        self.backend = create_backend(self.recipe, model_path, num_engines=1)

    def where(self) -> dict:
        """Node, GPU ids and device index of this engine actor (after its engine is ready)."""
        return self.placement.to_dict()

    def generate(self, prompt_token_ids: list[list[int]], seed: int, n: int | None = None,
                 first_index: int = 0) -> list:
        """`n` rollouts per prompt (default: trainer.rollouts_per_prompt) with the recipe's sampling.

        The prompts are `first_index, first_index + 1, ...` of the step's batch: seeds and the
        returned `prompt_index` are those global indices, so how the batch is split over
        engines does not change any sample.
        """
        from gdpo_megatron.generation import sampling_from_config

        sampling = sampling_from_config(self.recipe.generation.sampling, n=n or self.recipe.trainer.rollouts_per_prompt,
                                        seed=seed)
        if first_index and sampling.seed is not None:
            sampling = dataclasses.replace(sampling, seed=sampling.seed_for(first_index))
        rollouts = self.backend.generate(prompt_token_ids, sampling)
        if first_index:
            rollouts = [dataclasses.replace(r, prompt_index=r.prompt_index + first_index) for r in rollouts]
        return rollouts

    def update_weights(self, bucket_refs: list) -> dict:
        import ray

        def stream():
            for ref in bucket_refs:
                yield from ray.get(ref)

        stats = self.backend.update_weights(stream())
        return {"bytes": stats.bytes, "seconds": stats.seconds, "buckets": len(bucket_refs)}

    def sleep(self, level: int) -> dict:
        """Release memory for the policy's training phase; returns seconds and what vLLM reports asleep."""
        start = time.perf_counter()
        sleeping = self.backend.sleep(level)
        return {"seconds": time.perf_counter() - start, "sleeping": sorted(sleeping), **self._memory()}

    def wake(self, tags: list[str] | None = None) -> dict:
        start = time.perf_counter()
        sleeping = self.backend.wake(tags)
        return {"seconds": time.perf_counter() - start, "sleeping": sorted(sleeping), **self._memory()}

    def _memory(self) -> dict:
        """Device memory in use on each engine worker's GPU (the workers may be other processes)."""
        used = self.backend.device_used_bytes()
        return {"device_used_bytes": used} if used else {}
