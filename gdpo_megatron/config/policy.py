"""The `policy` section: the Megatron model, its parallel layout, precision and optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .errors import ConfigError
from .optimizer import OptimizerConfig
from .schema import Section, option


@dataclass
class RopeScalingConfig(Section):
    """RoPE frequency scaling as in the HF config's `rope_scaling` (type none = plain RoPE)."""

    type: Literal["none", "linear", "llama3"] = option("none", doc="scaling rule: none, linear (divide by factor) or llama3 (Llama-3.1 smooth)")
    factor: float = option(1.0, gt=0, doc="scaling factor")
    low_freq_factor: float = option(1.0, gt=0, doc="llama3: low-frequency factor")
    high_freq_factor: float = option(4.0, gt=0, doc="llama3: high-frequency factor")
    original_max_position_embeddings: int = option(8192, ge=1, doc="llama3: context length before scaling")

    def validate(self) -> None:
        if self.type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ConfigError(f"high_freq_factor: must be > low_freq_factor ({self.low_freq_factor}), got {self.high_freq_factor}")


@dataclass
class ModelConfig(Section):
    """Where the weights come from (an HF checkpoint dir) or explicit sizes for a fresh model."""

    hf_path: Optional[str] = option(None, doc="HF checkpoint directory (config.json + safetensors) or a known model name")
    family: Optional[Literal["llama", "qwen2", "qwen3"]] = option(None, doc="architecture family when sizes are explicit")
    num_layers: Optional[int] = option(None, ge=1, doc="transformer layers")
    hidden_size: Optional[int] = option(None, ge=1, doc="model width")
    ffn_hidden_size: Optional[int] = option(None, ge=1, doc="SwiGLU intermediate size")
    num_attention_heads: Optional[int] = option(None, ge=1, doc="query heads")
    num_query_groups: Optional[int] = option(None, ge=1, doc="KV heads (GQA); null = num_attention_heads")
    vocab_size: Optional[int] = option(None, ge=1, doc="vocabulary size")
    max_position_embeddings: int = option(4096, ge=1, doc="longest sequence the RoPE tables cover")
    rope_theta: float = option(10000.0, gt=0, doc="RoPE base")
    norm_epsilon: float = option(1e-5, gt=0, doc="RMSNorm epsilon")
    tie_embeddings: bool = option(False, doc="share input embedding and output projection")
    head_dim: Optional[int] = option(None, ge=1, doc="attention head size; null = hidden_size / num_attention_heads (Qwen3 sets it)")
    qkv_bias: Optional[bool] = option(None, doc="bias on the Q/K/V projections; null = the family's default (qwen2: true)")
    qk_norm: Optional[bool] = option(None, doc="RMSNorm on per-head queries and keys; null = the family's default (qwen3: true)")
    rope_scaling: RopeScalingConfig = option(default_factory=RopeScalingConfig, doc="RoPE frequency scaling")
    make_vocab_size_divisible_by: int = option(1, ge=1, doc="pad the vocabulary to a multiple of this times tensor size "
                                               "(padded rows are zero and masked out of logprobs)")


@dataclass
class ParallelConfig(Section):
    """Megatron parallel layout; data parallel is derived: world / (tensor * pipeline)."""

    tensor: int = option(1, ge=1, doc="tensor-parallel size")
    pipeline: int = option(1, ge=1, doc="pipeline-parallel size")
    virtual_pipeline: Optional[int] = option(None, ge=1, doc="virtual pipeline stages per rank (interleaved 1F1B)")
    sequence_parallel: bool = option(False, doc="sequence parallelism (GPU with tensor > 1 only)")
    first_stage_layers: Optional[int] = option(None, ge=0, doc="layers on the first pipeline stage (uneven split); null = even")
    last_stage_layers: Optional[int] = option(None, ge=0, doc="layers on the last pipeline stage (uneven split); null = even")


@dataclass
class PrecisionConfig(Section):
    """Training precision; FP8 needs Transformer Engine on a GPU."""

    dtype: Literal["fp32", "bf16"] = option("fp32", doc="parameter/compute dtype (bf16 keeps fp32 master weights)")
    fp8: Optional[Literal["e4m3", "hybrid"]] = option(None, doc="FP8 format through Transformer Engine")
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = option("delayed", doc="FP8 scaling recipe")
    fp8_params: bool = option(False, doc="keep parameters in FP8")


@dataclass
class PolicyConfig(Section):
    """The trained policy."""

    model: ModelConfig = option(default_factory=ModelConfig, doc="weights and architecture")
    parallel: ParallelConfig = option(default_factory=ParallelConfig, doc="tensor/pipeline layout")
    precision: PrecisionConfig = option(default_factory=PrecisionConfig, doc="dtype and FP8")
    optimizer: OptimizerConfig = option(default_factory=OptimizerConfig, doc="optimizer and LR schedule")
    micro_batch_size: int = option(1, ge=1, doc="sequences per micro-batch in the forward-backward schedule")
    recompute_activations: bool = option(False, doc="full activation recomputation")
    pad_sequence_to: int = option(1, ge=1, doc="pad every micro-batch's length to a multiple of this (masked "
                                  "positions; combined with what sequence parallelism and FP8 require, see "
                                  "docs/policy-training.md)")

    def validate(self) -> None:
        if self.precision.fp8_params and not self.optimizer.distributed:
            # megatron-core's non-distributed mixed-precision optimizer (Float16OptimizerWithFloat16Params)
            # builds its fp32 masters from the FP8 parameter itself (param.detach().clone().float(): the
            # dequantized FP8 values), so the loaded high-precision checkpoint is lost at the first step;
            # only the distributed optimizer takes the master copy from the loaded value.
            raise ConfigError("precision.fp8_params: true needs policy.optimizer.distributed: true (megatron-core's "
                              "non-distributed optimizer would take its fp32 master weights from the FP8-rounded "
                              "parameters, not the loaded checkpoint); set policy.optimizer.distributed: true or "
                              "policy.precision.fp8_params: false")
