"""Refit from a real Megatron policy into a real vLLM CPU engine, and the megatron-native backend.

One process holds the policy (megatron-core on gloo), one vLLM engine and one megatron
generation backend for the whole module. The policy takes one optimizer step on the
engine's own rollouts; after refit the engine's logprobs must equal the updated policy's
(the train/generation mismatch metric), and must not before.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.tiny_models import save_tiny_hf_model  # noqa: E402

from gdpo_megatron.config.recipe import RecipeConfig  # noqa: E402
from gdpo_megatron.config.schema import build  # noqa: E402
from gdpo_megatron.generation import SamplingSettings, create_backend, generation_mismatch, pad_logprobs  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = [[1, 5, 6, 7], [1, 40, 41, 42, 43], [1, 9, 100, 101]]
GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.megatron_policy import MegatronPolicy

    path = save_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")
    recipe = build(RecipeConfig, {
        "policy": {"model": {"hf_path": str(path)}, "micro_batch_size": 8,
                   "optimizer": {"lr": 5e-3, "weight_decay": 0.0, "clip_grad": 0.0, "distributed": False}},
        "generation": {"backend": "vllm", "colocated": False, "cpu_kv_cache_mb": 64, "max_model_len": 256,
                       "max_num_seqs": 16, "refit": {"bucket_mb": 0.5},
                       "sampling": {"temperature": 1.0, "max_new_tokens": 10}},
    })
    init_distributed(recipe.policy.parallel)
    policy = MegatronPolicy(recipe)
    vllm = create_backend(recipe, str(path))
    megatron = create_backend(build(RecipeConfig, {**_plain(recipe), "generation": {"backend": "megatron",
                                                                                     "colocated": False}}), str(path))
    yield recipe, policy, vllm, megatron
    vllm.close()
    megatron.close()
    destroy_distributed()


def _plain(recipe):
    from gdpo_megatron.config.schema import to_dict

    data = to_dict(recipe)
    data.pop("generation")
    return data


def policy_logprobs(policy, rollouts) -> torch.Tensor:
    """The policy's logprobs of each rollout's response tokens, response-aligned [N, R]."""
    from gdpo_megatron.policy.batch import build_policy_batch

    batch = build_policy_batch([r.prompt_token_ids for r in rollouts], [r.token_ids for r in rollouts])
    full = policy.compute_logprobs(batch)
    width = max(len(r.token_ids) for r in rollouts)
    out = torch.zeros(len(rollouts), width, dtype=torch.float64)
    for i, r in enumerate(rollouts):
        start = len(r.prompt_token_ids)
        out[i, : len(r.token_ids)] = full[i, start: start + len(r.token_ids)].double()
    return out


def mismatch(policy, rollouts) -> dict[str, float]:
    engine, mask = pad_logprobs([r.logprobs for r in rollouts])
    return generation_mismatch(engine, policy_logprobs(policy, rollouts), mask)


def test_megatron_native_greedy_equals_vllm(stack):
    _, policy, vllm, megatron = stack
    from_vllm = vllm.generate(PROMPTS, GREEDY)
    from_megatron = megatron.generate(PROMPTS, GREEDY)
    assert [r.token_ids for r in from_megatron] == [r.token_ids for r in from_vllm]
    assert [r.finish_reason for r in from_megatron] == [r.finish_reason for r in from_vllm]
    engine, mask = pad_logprobs([r.logprobs for r in from_vllm])
    native, _ = pad_logprobs([r.logprobs for r in from_megatron])
    assert generation_mismatch(engine, native, mask)["max"] < 1e-3
    # Before any training the engine agrees with the policy it was loaded from.
    assert mismatch(policy, from_vllm)["max"] < 1e-3


def test_refit_after_a_training_step_matches_the_updated_policy(stack):
    from gdpo_megatron.policy.batch import build_policy_batch

    _, policy, vllm, megatron = stack
    sampled = vllm.generate(PROMPTS, SamplingSettings(n=4, temperature=1.0, max_new_tokens=10, seed=7))
    batch = build_policy_batch([r.prompt_token_ids for r in sampled], [r.token_ids for r in sampled])
    # Alternate signs: push half the rollouts up and half down, a large, deterministic change.
    batch.advantages = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(len(sampled))])
    metrics = policy.train(batch)
    assert metrics["updates"] == 1

    stale = mismatch(policy, sampled)
    assert stale["mean"] > 0.01, stale  # the policy moved away from the engine's weights

    stats = vllm.update_weights(policy.export_hf_weights())
    params = sum(p.numel() for p in torch.nn.ModuleList(policy.model).parameters())
    assert stats.bytes >= 4 * params - 4 * 1024  # every fp32 weight moved (padded vocab rows are cut)
    assert stats.buckets >= 2 and stats.weight_version == 1

    fresh = vllm.generate(PROMPTS, GREEDY)
    assert mismatch(policy, fresh)["max"] < 1e-3
    resampled = vllm.generate(PROMPTS, SamplingSettings(n=4, temperature=1.0, max_new_tokens=10, seed=7))
    assert mismatch(policy, resampled)["max"] < 1e-3

    # The megatron-native backend refit from the same stream produces the same greedy tokens.
    megatron.update_weights(policy.export_hf_weights())
    assert [r.token_ids for r in megatron.generate(PROMPTS, GREEDY)] == [r.token_ids for r in fresh]
