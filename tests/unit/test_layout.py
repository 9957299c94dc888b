"""Layout validation messages, FP8 refusal, HF config reading, RoPE scaling and the QKV/gate-up maps."""

import math

import pytest
import torch

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.policy import ModelConfig, ParallelConfig, PolicyConfig, PrecisionConfig, RopeScalingConfig
from gdpo_megatron.conversion import tensor_layout as tl
from gdpo_megatron.parallel_layout import padded_vocab_size, stage_layer_counts, validate_layout, validate_world
from gdpo_megatron.policy.model import check_precision, resolve_model_config, rope_inv_freq


def _model(**kw):
    base = dict(family="llama", num_layers=8, hidden_size=512, ffn_hidden_size=1024, num_attention_heads=8,
                num_query_groups=2, vocab_size=1000)
    base.update(kw)
    return resolve_model_config(PolicyConfig(model=ModelConfig(**base)))


def test_world_must_be_multiple_of_tp_times_pp():
    assert validate_world(ParallelConfig(tensor=2, pipeline=2), 8) == 2
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by policy\.parallel\.tensor=2 \* "
                                          r"policy\.parallel\.pipeline=2 = 4"):
        validate_world(ParallelConfig(tensor=2, pipeline=2), 6)


def test_kv_heads_must_divide_by_tp():
    with pytest.raises(ConfigError, match=r"policy\.model\.num_query_groups=2 \(KV heads\) is not divisible by "
                                          r"policy\.parallel\.tensor=4"):
        validate_layout(_model(), ParallelConfig(tensor=4))


def test_query_heads_must_divide_by_tp():
    with pytest.raises(ConfigError, match=r"num_attention_heads=8 is not divisible by policy\.parallel\.tensor=3"):
        validate_layout(_model(num_query_groups=8), ParallelConfig(tensor=3))


def test_layers_must_divide_by_pp_unless_uneven_split_given():
    with pytest.raises(ConfigError, match=r"policy\.model\.num_layers=8 is not divisible by policy\.parallel\.pipeline=3"):
        validate_layout(_model(), ParallelConfig(pipeline=3))
    uneven = ParallelConfig(pipeline=3, first_stage_layers=2, last_stage_layers=2)
    validate_layout(_model(), uneven)
    assert stage_layer_counts(8, uneven) == [2, 4, 2]
    assert stage_layer_counts(8, ParallelConfig(pipeline=3, first_stage_layers=2)) == [2, 3, 3]
    with pytest.raises(ConfigError, match=r"leaves 5 layers, not divisible over the remaining 2 pipeline stages"):
        stage_layer_counts(8, ParallelConfig(pipeline=3, first_stage_layers=3))
    with pytest.raises(ConfigError, match=r"first_stage_layers/.*need policy\.parallel\.pipeline > 1"):
        stage_layer_counts(8, ParallelConfig(first_stage_layers=3))


def test_virtual_pipeline_needs_divisible_stage_layers():
    validate_layout(_model(), ParallelConfig(pipeline=2, virtual_pipeline=2))
    with pytest.raises(ConfigError, match=r"4 layers per pipeline stage .* not divisible by policy\.parallel\.virtual_pipeline=3"):
        validate_layout(_model(), ParallelConfig(pipeline=2, virtual_pipeline=3))


def test_sequence_parallel_needs_tp():
    with pytest.raises(ConfigError, match=r"sequence_parallel needs policy\.parallel\.tensor > 1"):
        validate_layout(_model(), ParallelConfig(sequence_parallel=True))


def test_vocab_padding():
    assert padded_vocab_size(257, 1) == 257
    assert padded_vocab_size(257, 2) == 258
    assert padded_vocab_size(49152, 4, 128) == 49152
    assert padded_vocab_size(151665, 8, 128) == 152576  # 149 * 1024


def test_missing_sizes_name_the_keys():
    with pytest.raises(ConfigError, match=r"set hf_path or all of policy\.model\.ffn_hidden_size, policy\.model\.vocab_size"):
        resolve_model_config(PolicyConfig(model=ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=1)))


def test_fp8_without_transformer_engine_is_a_config_error():
    policy = PolicyConfig(precision=PrecisionConfig(fp8="hybrid", fp8_recipe="blockwise"))
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA; the refusal is for hosts without TE/GPU")
    with pytest.raises(ConfigError, match=r"policy\.precision\.fp8='hybrid' .* need Transformer Engine on a GPU, "
                                          r"but CUDA is not available"):
        check_precision(policy)
    check_precision(PolicyConfig())  # bf16/fp32 is fine


def test_family_defaults_fill_qkv_bias_and_qk_norm():
    qwen2 = _model(family="qwen2")
    qwen3 = _model(family="qwen3", head_dim=128)
    assert (qwen2.qkv_bias, qwen2.qk_norm, qwen2.head_dim) == (True, False, 64)
    assert (qwen3.qkv_bias, qwen3.qk_norm, qwen3.head_dim) == (False, True, 128)


def test_hf_config_json_fills_the_model_section(tmp_path):
    import json

    cfg = {"model_type": "qwen3", "hidden_size": 128, "intermediate_size": 192, "num_hidden_layers": 3,
           "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 300,
           "max_position_embeddings": 512, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
           "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = resolve_model_config(PolicyConfig(model=ModelConfig(hf_path=str(tmp_path))))
    assert (model.family, model.num_layers, model.head_dim, model.num_query_groups) == ("qwen3", 3, 64, 2)
    assert (model.qk_norm, model.qkv_bias, model.tie_embeddings, model.rope_theta) == (True, False, True, 500000.0)
    assert model.rope_scaling == RopeScalingConfig(type="llama3", factor=32.0, low_freq_factor=1.0,
                                                   high_freq_factor=4.0, original_max_position_embeddings=8192)
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"config\.json: model_type 'gpt2' is not supported"):
        resolve_model_config(PolicyConfig(model=ModelConfig(hf_path=str(tmp_path))))


def test_llama3_rope_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    hf_config = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_theta=500000.0, rope_scaling=scaling,
                            max_position_embeddings=131072)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_config, torch.device("cpu"))
    ours = rope_inv_freq(ModelConfig(head_dim=128, rope_theta=500000.0,
                                     rope_scaling=RopeScalingConfig(type="llama3", factor=8.0)))
    torch.testing.assert_close(ours, expected.float(), rtol=1e-6, atol=0)
    # Unscaled frequencies are theta^(-2i/d); linear scaling divides them by the factor.
    plain = rope_inv_freq(ModelConfig(head_dim=4, rope_theta=100.0))
    assert plain.tolist() == pytest.approx([1.0, 0.1])
    linear = rope_inv_freq(ModelConfig(head_dim=4, rope_theta=100.0, rope_scaling=RopeScalingConfig(type="linear", factor=2.0)))
    assert linear.tolist() == pytest.approx([0.5, 0.05])


def test_qkv_fusion_groups_heads_by_kv_head():
    # 4 query heads, 2 KV groups, head_dim 1: rows are [q0 q1 k0 v0 | q2 q3 k1 v1].
    q = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    k = torch.tensor([[10.0], [11.0]])
    v = torch.tensor([[20.0], [21.0]])
    fused = tl.fuse_qkv(q, k, v, num_heads=4, num_groups=2)
    assert fused.flatten().tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    assert tl.shard(fused, 0, 2, 1).flatten().tolist() == [2, 3, 11, 21]  # TP rank 1 holds group 1
    for part, original in zip(tl.split_qkv(fused, 4, 2), (q, k, v)):
        assert torch.equal(part, original)
    bias = torch.arange(8.0)
    assert torch.equal(torch.cat(tl.split_qkv(tl.fuse_qkv(bias[:4], bias[4:6], bias[6:], 4, 2), 4, 2)), bias)


def test_gate_up_fusion_per_tp_rank():
    gate, up = torch.arange(4.0).unsqueeze(1), 10 + torch.arange(4.0).unsqueeze(1)
    shards = [tl.fuse_gate_up(gate, up, 2, r) for r in range(2)]
    assert shards[0].flatten().tolist() == [0, 1, 10, 11]
    assert shards[1].flatten().tolist() == [2, 3, 12, 13]
    g, u = tl.split_gate_up(shards)
    assert torch.equal(g, gate) and torch.equal(u, up)
    assert math.isclose(tl.pad_vocab(torch.ones(3, 2), 4)[3].abs().sum().item(), 0.0)
