"""The rollout engine as a Ray actor: generation plus weight refit from object-store buckets."""

from __future__ import annotations

import os

import torch

from gdpo_megatron.orchestration.refit import RefitReceiver


class GenerationWorker(RefitReceiver):  # RefitReceiver: collective / CUDA IPC receivers
    def __init__(self, recipe_data: dict, model_path: str) -> None:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        # vLLM logs several INFO lines per refit and warns that RoPE buffers are not in the
        # weight stream (they are computed, not loaded); both drown the progress line.
        # Export VLLM_LOGGING_LEVEL=INFO to see everything.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        from gdpo_megatron.config.recipe import RecipeConfig
        from gdpo_megatron.config.schema import build
        from gdpo_megatron.generation import create_backend

        self.recipe = build(RecipeConfig, recipe_data)
        self.backend = create_backend(self.recipe, model_path)

    def generate(self, prompt_token_ids: list[list[int]], seed: int, n: int | None = None) -> list:
        """`n` rollouts per prompt (default: trainer.rollouts_per_prompt) with the recipe's sampling."""
        from gdpo_megatron.generation import sampling_from_config

        sampling = sampling_from_config(self.recipe.generation.sampling, n=n or self.recipe.trainer.rollouts_per_prompt,
                                        seed=seed)
        return self.backend.generate(prompt_token_ids, sampling)

    def update_weights(self, bucket_refs: list) -> dict:
        import ray

        def stream():
            for ref in bucket_refs:
                yield from ray.get(ref)

        stats = self.backend.update_weights(stream())
        return {"bytes": stats.bytes, "seconds": stats.seconds, "buckets": len(bucket_refs)}

    def close(self) -> None:
        self.backend.close()
