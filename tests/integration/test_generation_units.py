"""Pure parts of generation: mismatch metric (golden numbers), buckets, packing, prompt spreading,
sampling settings and config validation. No engine is started; runs in well under a second."""

from __future__ import annotations

import math

import pytest
import torch

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.recipe import RecipeConfig
from gdpo_megatron.config.schema import build
from gdpo_megatron.generation import (MismatchCheck, Rollout, SamplingSettings, check_grouped, generation_mismatch,
                                      pad_logprobs, sampling_from_config)
from gdpo_megatron.generation.buckets import iter_buckets
from gdpo_megatron.generation.transports import pack_bucket, unpack_bucket
from gdpo_megatron.partition import even_ranges


def test_mismatch_golden_values_and_masking():
    engine = torch.tensor([[math.log(0.5), math.log(0.25), 123.0]])
    policy = torch.tensor([[math.log(0.5), math.log(0.5), -7.0]])
    mask = torch.tensor([[True, True, False]])
    # ratios: 1 and 2 -> |r-1| = 0 and 1; the masked position is ignored whatever it holds.
    result = generation_mismatch(engine, policy, mask)
    assert result["mean"] == pytest.approx(0.5)
    assert result["max"] == pytest.approx(1.0)
    assert result["abs_log_ratio_mean"] == pytest.approx(math.log(2) / 2)
    assert result["tokens"] == 2
    assert generation_mismatch(engine, policy, torch.zeros_like(mask))["mean"] == 0.0
    with pytest.raises(ValueError, match="shapes differ"):
        generation_mismatch(engine, policy[:, :2], mask)


def test_mismatch_check_is_due_every_n_steps_and_warns_above_threshold():
    warnings = []
    check = MismatchCheck(every_steps=3, warn_above=0.1)
    assert [check.due(done) for done in range(7)] == [True, False, False, True, False, False, True]
    assert MismatchCheck(every_steps=0).due(0) is False
    values, mask = pad_logprobs([[math.log(0.5)], [math.log(0.5), math.log(0.5)]])
    assert mask.tolist() == [[True, False], [True, True]]
    quiet = {f"mismatch/{k}": v for k, v in generation_mismatch(values, values, mask).items()}
    assert check.judge(1, quiet, warn=warnings.append) == {"mismatch/above_warn": 0.0} and warnings == []
    # every token's probability 1.5x the engine's: |1.5 - 1| = 0.5 > 0.1
    loud = {f"mismatch/{k}": v for k, v in generation_mismatch(values, values + math.log(1.5), mask).items()}
    assert loud["mismatch/mean"] == pytest.approx(0.5)
    assert check.judge(4, loud, warn=warnings.append) == {"mismatch/above_warn": 1.0}
    assert len(warnings) == 1 and "step 4" in warnings[0] and "warn_above=0.1" in warnings[0]
    assert check.judge(4, {}, warn=warnings.append) == {}  # no mismatch measured (no engine logprobs)
    assert "stale weights" in warnings[0]
    # With overlap the rollouts are one update old by design: the warning says so instead.
    behind = MismatchCheck(every_steps=1, warn_above=0.1, one_update_behind=True)
    assert behind.judge(5, loud, warn=warnings.append) == {"mismatch/above_warn": 1.0}
    assert "one update older" in warnings[1] and "stale weights" not in warnings[1]


def test_buckets_bound_size_and_preserve_order():
    tensors = [(f"w{i}", torch.zeros(25)) for i in range(10)]  # 100 bytes each
    buckets = list(iter_buckets(iter(tensors), bucket_bytes=250))
    assert [[n for n, _ in b] for b in buckets] == [["w0", "w1", "w2"], ["w3", "w4", "w5"], ["w6", "w7", "w8"], ["w9"]]
    assert [len(b) for b in iter_buckets([("big", torch.zeros(1000))], 8)] == [1]
    with pytest.raises(ValueError, match="appears twice"):
        list(iter_buckets([("a", torch.zeros(1)), ("a", torch.zeros(1))], 100))


def test_packed_bucket_round_trip_mixed_dtypes_shared_memory():
    bucket = [("a", torch.arange(6, dtype=torch.float32).reshape(2, 3)), ("b", torch.tensor([1, 2, 3], dtype=torch.int8)),
              ("c", torch.randn(4, 5).to(torch.bfloat16)), ("d", torch.randn(3, 4).t())]  # non-contiguous
    packed = pack_bucket(bucket, shared=True)
    assert packed.buffer.is_shared()
    assert packed.nbytes == sum(t.numel() * t.element_size() for _, t in bucket)
    for (name, original), (got_name, got) in zip(bucket, unpack_bucket(packed)):
        assert got_name == name and got.dtype == original.dtype and torch.equal(got, original)


def test_split_evenly_covers_in_order():
    assert even_ranges(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert even_ranges(1, 3) == [(0, 1), (1, 1), (1, 1)]


def test_sampling_settings_from_config_and_seeds():
    recipe = build(RecipeConfig, {"generation": {"sampling": {"temperature": 0.7, "top_k": 20, "stop": ["\n\n"],
                                                              "stop_token_ids": [5], "max_new_tokens": 64}}})
    s = sampling_from_config(recipe.generation.sampling, n=4, seed=100)
    assert (s.n, s.temperature, s.top_k, s.stop, s.stop_token_ids, s.max_new_tokens, s.seed) == \
        (4, 0.7, 20, ("\n\n",), (5,), 64, 100)
    assert [s.seed_for(p) for p in range(3)] == [100, 104, 108]  # engines add the sample index: disjoint
    assert SamplingSettings(seed=None).seed_for(3) is None
    with pytest.raises(ValueError, match="top_k"):
        SamplingSettings(top_k=0)
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingSettings(max_new_tokens=4, min_new_tokens=5)
    # A shorter max_new_tokens (validation, eval) lowers the recipe's minimum with it.
    fixed = build(RecipeConfig, {"generation": {"sampling": {"max_new_tokens": 16, "min_new_tokens": 16}}})
    assert sampling_from_config(fixed.generation.sampling).min_new_tokens == 16
    assert sampling_from_config(fixed.generation.sampling, max_new_tokens=8).min_new_tokens == 8


def test_generation_config_rejects_inconsistent_settings():
    with pytest.raises(ConfigError, match="generation.sampling.top_k"):
        build(RecipeConfig, {"generation": {"sampling": {"top_k": 0}}})
    with pytest.raises(ConfigError, match="generation.refit.transport"):
        build(RecipeConfig, {"generation": {"colocated": False, "refit": {"transport": "cuda_ipc"}}})
    with pytest.raises(ConfigError, match="generation.num_engines"):
        build(RecipeConfig, {"generation": {"backend": "megatron", "num_engines": 2}})
    with pytest.raises(ConfigError, match="generation.sampling.min_new_tokens"):
        build(RecipeConfig, {"generation": {"sampling": {"max_new_tokens": 8, "min_new_tokens": 9}}})
    with pytest.raises(ConfigError, match="sampling.min_new_tokens: the megatron backend"):
        build(RecipeConfig, {"generation": {"backend": "megatron", "sampling": {"min_new_tokens": 4}}})


def test_check_grouped_detects_disorder():
    def r(p, s):
        return Rollout(p, s, [1], [2], [-0.1], "stop")

    check_grouped([r(0, 0), r(0, 1), r(1, 0), r(1, 1)], 2, 2)
    with pytest.raises(RuntimeError, match="out of order"):
        check_grouped([r(0, 0), r(1, 0), r(0, 1), r(1, 1)], 2, 2)
    with pytest.raises(ValueError, match="logprobs"):
        Rollout(0, 0, [1], [2, 3], [-0.1], "stop")
