"""Two vLLM CPU engines in child processes: prompts spread over both come back in prompt order,
and a refit through shared memory reaches both before the next generation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_generation_vllm import EOS, reference_greedy  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.tiny_models import save_tiny_hf_model  # noqa: E402

from gdpo_megatron.config.recipe import RecipeConfig  # noqa: E402
from gdpo_megatron.config.schema import build  # noqa: E402
from gdpo_megatron.generation import SamplingSettings, create_backend  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = [[1, 5, 6, 7], [1, 40, 41], [1, 9, 100, 101, 102], [1, 60], [1, 70, 71, 72, 73, 74, 75]]


def test_two_engines_order_and_shared_memory_refit(tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_tiny_hf_model(tmp_path / "llama", "llama")
    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    assert model.config.eos_token_id == EOS
    recipe = build(RecipeConfig, {"generation": {"backend": "vllm", "colocated": False, "num_engines": 2,
                                                 "cpu_kv_cache_mb": 32, "max_model_len": 128, "max_num_seqs": 8,
                                                 "refit": {"bucket_mb": 0.5}}})
    backend = create_backend(recipe, str(path))
    try:
        assert len(backend.remote) == 2
        greedy = SamplingSettings(n=2, temperature=0.0, max_new_tokens=8)
        rollouts = backend.generate(PROMPTS, greedy)
        assert [(r.prompt_index, r.sample_index) for r in rollouts] == [(p, s) for p in range(5) for s in range(2)]
        for r in rollouts:
            assert r.prompt_token_ids == PROMPTS[r.prompt_index]
            assert r.token_ids == reference_greedy(model, PROMPTS[r.prompt_index], 8)

        gen = torch.Generator().manual_seed(1)
        updated = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
        stats = backend.update_weights(iter(updated.items()))
        assert stats.tensors == len(updated) and stats.buckets >= 2
        model.load_state_dict(updated)
        after = backend.generate(PROMPTS, SamplingSettings(n=1, temperature=0.0, max_new_tokens=8))
        assert [r.token_ids for r in after] == [reference_greedy(model, p, 8) for p in PROMPTS]
        assert [r.token_ids for r in after] != [r.token_ids for r in rollouts[::2]]
    finally:
        backend.close()
