"""HF export of FP8 parameters: the exporter dequantizes them, so the stream holds plain tensors.

Transformer Engine cannot be installed on a CPU host, so its Float8Tensor is replaced here by a
stand-in with the same shape of problem: a tensor subclass whose storage is one uint8 byte per
element under a wider "fake" dtype, that only `dequantize()` turns into values (TE keeps `_data`
and `_scale_inv` the same way). megatron-core's own `is_float8tensor` / `dequantize_fp8_tensor`
are pointed at the stand-in class, so the exporter's real dispatch runs. The same export after a
real FP8 step runs in the GPU suite (tests/gpu/test_refit_gpu.py) when TE is importable.
"""

from __future__ import annotations

import pytest
import torch

from gdpo_megatron.conversion.exporter import plain_tensor


class StandInFloat8Tensor(torch.Tensor):
    """Stand-in for TE's Float8Tensor (uint8 storage + inverse scale, fake dtype); only detach works."""

    @staticmethod
    def __new__(cls, data: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype):
        self = torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=dtype, device=data.device)
        self._data, self._scale_inv = data, scale_inv
        return self

    @classmethod
    def quantize(cls, values: torch.Tensor) -> "StandInFloat8Tensor":
        scale = values.abs().max().clamp(min=1e-12) / 448.0  # e4m3's largest finite value
        data = (values.float() / scale).to(torch.float8_e4m3fn).view(torch.uint8)
        return cls(data, scale.reshape(1), values.dtype)

    def dequantize(self) -> torch.Tensor:
        return (self._data.view(torch.float8_e4m3fn).float() * self._scale_inv).to(self.dtype)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.detach.default:
            (source,) = args
            return cls(source._data, source._scale_inv, source.dtype)
        raise NotImplementedError(f"{func} is not defined for the FP8 stand-in (dequantize first)")


@pytest.fixture
def fp8_class(monkeypatch):
    from megatron.core import fp8_utils

    monkeypatch.setattr(fp8_utils, "HAVE_TE_FP8_TENSOR_CLASS", True)
    monkeypatch.setattr(fp8_utils, "FP8_TENSOR_CLASS", StandInFloat8Tensor)
    monkeypatch.setattr(fp8_utils, "is_te_min_version", lambda *args, **kwargs: True)  # TE 2.x: .dequantize()
    return StandInFloat8Tensor


def test_plain_tensor_dequantizes_fp8_and_passes_other_tensors_through(fp8_class):
    values = torch.linspace(-3.0, 5.0, 24).reshape(4, 6).to(torch.bfloat16)
    fp8 = fp8_class.quantize(values)
    expected = fp8.dequantize()
    assert fp8._data.element_size() == 1 and fp8.element_size() == 2  # the byte count a raw copy gets wrong
    got = plain_tensor(fp8)
    assert type(got) is torch.Tensor and got.dtype == torch.bfloat16 and got.shape == (4, 6)
    assert torch.equal(got, expected)
    assert (got.float() - values.float()).abs().max() <= 0.07 * values.float().abs().max()  # e4m3 rounding only
    plain = torch.randn(3, 5)
    assert torch.equal(plain_tensor(plain), plain) and type(plain_tensor(plain)) is torch.Tensor


def test_refit_bucket_of_a_dequantized_fp8_tensor_round_trips(fp8_class):
    from gdpo_megatron.generation.transports import pack_bucket, unpack_bucket

    fp8 = fp8_class.quantize(torch.randn(8, 16, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16))
    bucket = [("w", plain_tensor(fp8)), ("b", torch.arange(5, dtype=torch.float32))]
    packed = pack_bucket(bucket)
    assert packed.nbytes == 8 * 16 * 2 + 5 * 4
    (name_w, w), (name_b, b) = unpack_bucket(packed)
    assert (name_w, name_b) == ("w", "b")
    assert torch.equal(w, fp8.dequantize()) and torch.equal(b, bucket[1][1])


@pytest.fixture(scope="module")
def world():
    from gdpo_megatron.config.policy import ParallelConfig
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed

    init_distributed(ParallelConfig())
    yield
    destroy_distributed()


def _policy():
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build

    return build(RecipeConfig, {"policy": {"model": {
        "family": "llama", "num_layers": 2, "hidden_size": 32, "ffn_hidden_size": 64, "num_attention_heads": 4,
        "num_query_groups": 2, "vocab_size": 61, "max_position_embeddings": 64}}}).policy


def test_hf_export_of_a_model_with_fp8_parameters_equals_the_dequantized_model(world, fp8_class):
    """Two FP8 parameters (a fused QKV and a row-parallel weight): the export must equal the export
    of the same model holding their dequantized values as ordinary parameters."""
    from gdpo_megatron.conversion.exporter import export_hf_weights
    from gdpo_megatron.policy.model import build_model, unwrap

    policy = _policy()
    torch.manual_seed(0)
    chunks = build_model(policy)
    layer = unwrap(chunks[0]).decoder.layers[1]
    modules = [layer.self_attention.linear_qkv, layer.mlp.linear_fc2]
    fp8 = [fp8_class.quantize(m.weight.detach().clone()) for m in modules]
    with torch.no_grad():
        for module, quantized in zip(modules, fp8):
            module.weight.copy_(quantized.dequantize())
    reference = {name: tensor.clone() for name, tensor in export_hf_weights(chunks, policy)}
    for module, quantized in zip(modules, fp8):
        module._parameters["weight"] = quantized  # what fp8_model_init leaves in the module
    assert sum(isinstance(p, fp8_class) for p in unwrap(chunks[0]).parameters()) == 2
    exported = dict(export_hf_weights(chunks, policy))
    assert exported.keys() == reference.keys() and len(exported) == 2 * 9 + 3
    for name, tensor in exported.items():
        assert type(tensor) is torch.Tensor, name
        assert tensor.dtype == reference[name].dtype and torch.equal(tensor, reference[name]), name
    # The FP8 tensors really are in the stream (q/k/v split out of the fused weight, and down_proj).
    q = exported["model.layers.1.self_attn.q_proj.weight"]
    assert q.shape == (32, 32) and q.abs().sum() > 0
    assert exported["model.layers.1.mlp.down_proj.weight"].shape == (32, 64)
