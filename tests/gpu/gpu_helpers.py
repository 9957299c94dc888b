"""Shared pieces of the GPU smoke tests (batches, recipes, independent transformers references)."""

from __future__ import annotations

import pytest
import torch

# FP8 parameters through Transformer Engine (needs the distributed optimizer, which gpu_recipe sets).
FP8 = {"dtype": "bf16", "fp8": "e4m3", "fp8_params": True}


def need_te() -> None:
    pytest.importorskip("transformer_engine.pytorch", reason="Transformer Engine is not installed")


def need_vllm() -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed")


def odd_length_batch(rows: int = 6, seed: int = 3, response_base: int = 5, response_step: int = 4):
    """Prompts and responses of odd, different lengths (no two micro-batches share a shape).

    Row i: prompt 3 + 2 * (i % 3) tokens, response response_base + response_step * i tokens.
    """
    from gdpo_megatron.policy.batch import build_policy_batch

    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, 200, (3 + 2 * (i % 3),), generator=g).tolist() for i in range(rows)]
    responses = [torch.randint(3, 200, (response_base + response_step * i,), generator=g).tolist() for i in range(rows)]
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


def hf_logprobs(hf_path, batch) -> torch.Tensor:
    """Token-aligned fp32 logprobs of transformers' model on the GPU (an independent reference)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_path), dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        logits = model(batch.input_ids.cuda()).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:].cuda().unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(lp, (1, 0)).cpu() * (batch.response_mask != 0)


def hf_rollout_mismatch(hf_path, rollouts, device: str = "cuda") -> float:
    """Mean |exp(hf - engine) - 1| over the rollouts' response tokens, hf = transformers fp32 on `hf_path`.

    Each rollout runs on its own (no padding), so the reference needs nothing from this project.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_path), dtype=torch.float32).to(device).eval()
    errors = []
    with torch.no_grad():
        for r in rollouts:
            ids = torch.tensor([list(r.prompt_token_ids) + list(r.token_ids)], device=device)
            lp = torch.log_softmax(model(ids).logits.float()[0, :-1], -1)
            start = len(r.prompt_token_ids) - 1
            reference = lp[start: start + len(r.token_ids)].gather(-1, ids[0, start + 1:].unsqueeze(-1)).squeeze(-1)
            engine = torch.tensor(r.logprobs, dtype=torch.float32, device=device)
            errors.append((torch.exp(reference - engine) - 1).abs())
    del model
    if device != "cpu":
        torch.cuda.empty_cache()
    return torch.cat(errors).mean().item()
