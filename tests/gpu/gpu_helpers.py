"""Shared pieces of the GPU smoke tests (batches and recipes)."""

from __future__ import annotations

import torch


def odd_length_batch(rows: int = 6, seed: int = 3):
    """Prompts and responses of odd, different lengths (no two micro-batches share a shape)."""
    from gdpo_megatron.policy.batch import build_policy_batch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 200, (3 + 2 * (i % 3),), generator=g).tolist() for i in range(rows)]
    responses = [torch.randint(3, 200, (5 + 4 * i,), generator=g).tolist() for i in range(rows)]
    batch = build_policy_batch(prompts, responses)
    batch.set_advantages(torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(rows)]))
    return batch


def gpu_recipe(hf_path, **policy):
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build

    precision = policy.pop("precision", {})
    return build(RecipeConfig, {
        "policy": {"model": {"hf_path": str(hf_path)}, "micro_batch_size": 2, "precision": precision,
                   "optimizer": {"lr": 5e-3, "weight_decay": 0.0, "clip_grad": 1.0, "distributed": True}, **policy},
        "generation": {"backend": "vllm", "colocated": False, "sampling": {"temperature": 1.0, "max_new_tokens": 10}},
    })
