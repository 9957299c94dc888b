"""Build megatron-core GPT models (Llama / Qwen2 / Qwen3 shape) from the recipe's `policy`.

Contract (the train step, generation and conversion build on it):

    state = init_distributed(policy.parallel)              # gdpo_megatron.distributed.setup
    chunks = build_model(policy)                           # list of model chunks for this rank
    load_hf_weights(chunks, hf_dir, policy)                # gdpo_megatron.conversion (if hf_path)

- `build_model` returns one chunk per virtual pipeline stage (one chunk without virtual
  pipelining). Chunks are plain `GPTModel`s in fp32, or `Float16Module(GPTModel)` in bf16;
  they are NOT wrapped in DDP (the train step does that). Use `unwrap(chunk)` to reach
  the GPTModel. Parameters are on the current CUDA device, or on the CPU without CUDA.
- The forward `chunk(input_ids, position_ids, attention_mask=None)` returns, on the
  last pipeline stage, logits `[batch, seq, padded_vocab / TP]` (vocab-parallel: not
  gathered); other stages return hidden states. Padded vocabulary entries are
  `>= vocab_info(policy).vocab_size`: their weights are zero; mask them out of softmaxes.
- With `policy.model.hf_path` the weights are left uninitialised (`perform_initialization`
  off): call `load_hf_weights` before use. Without it, megatron's initialisation runs with
  `use_cpu_initialization` on CPU, so every TP layout starts from the same master weights.
- Layer spec: Transformer Engine when TE imports and CUDA is present, megatron's local
  spec otherwise. FP8 needs TE and CUDA; asking for it elsewhere is a ConfigError.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.policy import ModelConfig, PolicyConfig, RopeScalingConfig
from gdpo_megatron.policy.hf_config import model_fields_from_hf
from gdpo_megatron.parallel_layout import padded_vocab_size, stage_layer_counts, validate_layout

_FAMILY_DEFAULTS = {  # what the family implies when the recipe leaves a field null
    "llama": {"qkv_bias": False, "qk_norm": False},
    "qwen2": {"qkv_bias": True, "qk_norm": False},
    "qwen3": {"qkv_bias": False, "qk_norm": True},
}
_REQUIRED = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class VocabInfo:
    vocab_size: int          # the tokenizer's / HF checkpoint's vocabulary
    padded_vocab_size: int   # what the embedding and output layer hold (multiple of TP)


def resolve_model_config(policy: PolicyConfig) -> ModelConfig:
    """`policy.model` with every size filled: from hf_path's config.json, or the explicit fields."""
    model = policy.model
    if model.hf_path:
        fields = model_fields_from_hf(model.hf_path)
        fields["rope_scaling"] = RopeScalingConfig(**fields["rope_scaling"])
        return dataclasses.replace(model, **fields)
    missing = [k for k in _REQUIRED if getattr(model, k) is None]
    if missing:
        raise ConfigError("policy.model: set hf_path or all of " + ", ".join(f"policy.model.{k}" for k in missing))
    family = model.family or "llama"
    defaults = _FAMILY_DEFAULTS[family]
    if model.head_dim is None and model.hidden_size % model.num_attention_heads:
        raise ConfigError(f"policy.model.hidden_size={model.hidden_size} is not divisible by "
                          f"policy.model.num_attention_heads={model.num_attention_heads}; set policy.model.head_dim")
    return dataclasses.replace(
        model,
        family=family,
        num_query_groups=model.num_query_groups or model.num_attention_heads,
        head_dim=model.head_dim or model.hidden_size // model.num_attention_heads,
        qkv_bias=defaults["qkv_bias"] if model.qkv_bias is None else model.qkv_bias,
        qk_norm=defaults["qk_norm"] if model.qk_norm is None else model.qk_norm,
    )


def vocab_info(policy: PolicyConfig, model: ModelConfig | None = None) -> VocabInfo:
    model = model or resolve_model_config(policy)
    padded = padded_vocab_size(model.vocab_size, policy.parallel.tensor, model.make_vocab_size_divisible_by)
    return VocabInfo(model.vocab_size, padded)


def transformer_engine_available() -> bool:
    """True when TE imports and CUDA is present (then the TE layer spec is used)."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # an installed TE without its CUDA libraries fails with various errors
        return False
    return True


def check_precision(policy: PolicyConfig) -> None:
    precision = policy.precision
    wants_fp8 = precision.fp8 is not None or precision.fp8_params
    if wants_fp8 and not transformer_engine_available():
        where = "CUDA is not available" if not torch.cuda.is_available() else "transformer_engine is not importable"
        raise ConfigError(
            f"policy.precision.fp8={precision.fp8!r} / policy.precision.fp8_params={precision.fp8_params} need "
            f"Transformer Engine on a GPU, but {where}; set policy.precision.fp8: null and fp8_params: false")
    if precision.fp8_params and precision.fp8 is None:
        raise ConfigError("policy.precision.fp8_params=true needs policy.precision.fp8 (e4m3 or hybrid)")


def transformer_config(policy: PolicyConfig, model: ModelConfig, *, for_inference: bool = False):
    """megatron-core TransformerConfig for a resolved model and the recipe's layout/precision."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    parallel, precision = policy.parallel, policy.precision
    on_gpu = torch.cuda.is_available()
    bf16 = precision.dtype == "bf16"
    counts = stage_layer_counts(model.num_layers, parallel)
    kwargs = dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        kv_channels=model.head_dim,
        tensor_model_parallel_size=parallel.tensor,
        pipeline_model_parallel_size=parallel.pipeline,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline,
        sequence_parallel=parallel.sequence_parallel,
        normalization="RMSNorm",
        layernorm_epsilon=model.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=bool(model.qkv_bias),
        qk_layernorm=bool(model.qk_norm),
        # RL fine-tuning of pretrained models runs without dropout (as the checkpoints do).
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.02,
        attention_softmax_in_fp32=True,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        # Deterministic master weights on CPU (same for every TP layout); GPUs init in place.
        use_cpu_initialization=not on_gpu,
        perform_initialization=model.hf_path is None,
        # The fused kernels need TE/APEX/CUDA; the unfused paths are numerically the same.
        persist_layer_norm=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
    )
    if parallel.pipeline > 1 and (parallel.first_stage_layers is not None or parallel.last_stage_layers is not None):
        kwargs["num_layers_in_first_pipeline_stage"] = counts[0] if parallel.first_stage_layers is not None else None
        kwargs["num_layers_in_last_pipeline_stage"] = counts[-1] if parallel.last_stage_layers is not None else None
    if policy.recompute_activations and not for_inference:
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    if precision.fp8 is not None:
        kwargs.update(fp8=precision.fp8, fp8_recipe=precision.fp8_recipe, fp8_param=precision.fp8_params)
    return TransformerConfig(**kwargs)


def _layer_spec(model: ModelConfig, use_te: bool):
    from megatron.core.models.gpt import gpt_layer_specs

    if use_te:
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=bool(model.qk_norm))
    return gpt_layer_specs.get_gpt_layer_local_spec(qk_layernorm=bool(model.qk_norm), normalization="RMSNorm")


def rope_inv_freq(model: ModelConfig) -> torch.Tensor:
    """RoPE inverse frequencies with the checkpoint's theta and scaling (HF's formulas)."""
    dim = model.head_dim
    inv_freq = 1.0 / (model.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = model.rope_scaling
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    if scaling.type == "llama3":
        low_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
        high_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
        smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
            scaling.high_freq_factor - scaling.low_freq_factor)
        smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def unwrap(chunk: torch.nn.Module) -> torch.nn.Module:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


def build_model(policy: PolicyConfig, *, for_inference: bool = False) -> list[torch.nn.Module]:
    """Model chunks of this rank (see the module docstring). Needs `init_distributed` first."""
    from megatron.core import parallel_state as mpu
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.module import Float16Module

    model = resolve_model_config(policy)
    validate_layout(model, policy.parallel, torch.distributed.get_world_size())
    check_precision(policy)
    config = transformer_config(policy, model, for_inference=for_inference)
    spec = _layer_spec(model, transformer_engine_available())
    vocab = vocab_info(policy, model)
    inv_freq = rope_inv_freq(model)
    vp = policy.parallel.virtual_pipeline

    chunks: list[torch.nn.Module] = []
    for vp_stage in range(vp or 1):
        stage = vp_stage if vp else None
        gpt = GPTModel(
            config=config,
            transformer_layer_spec=spec,
            vocab_size=vocab.padded_vocab_size,
            max_sequence_length=model.max_position_embeddings,
            pre_process=mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            parallel_output=True,
            share_embeddings_and_output_weights=model.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=int(model.rope_theta),
            vp_stage=stage,
        )
        # megatron's own RoPE scaling covers only Llama-3 with fixed factors; use the
        # checkpoint's exact parameters instead (also fixes a non-integer theta).
        rotary = getattr(gpt, "rotary_pos_emb", None)
        if rotary is not None:
            rotary.inv_freq = inv_freq.to(rotary.inv_freq.device)
        if torch.cuda.is_available():
            gpt.cuda(torch.cuda.current_device())
        chunk: torch.nn.Module = Float16Module(config, gpt) if config.bf16 else gpt
        if for_inference:
            chunk.eval()
        chunks.append(chunk)
    return chunks


def model_forward(chunk: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None):
    """Causal forward of one chunk on `[batch, seq]` tokens (single-stage convenience)."""
    if position_ids is None:
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
    return chunk(input_ids, position_ids, attention_mask=None)


@torch.no_grad()
def forward_logits(model_chunks: list[torch.nn.Module], input_ids: torch.Tensor, vocab_size: int | None = None):
    """Full-vocabulary fp32 logits `[batch, seq, vocab]` of a causal forward through all PP stages.

    Called on every rank with the same `input_ids`; returns the logits on last-stage ranks
    (TP-gathered, padding columns cut at `vocab_size` when given) and None elsewhere.
    Meant for checks and small-scale generation, not for training (which stays vocab-parallel).
    """
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

    device = next(model_chunks[0].parameters()).device
    tokens = input_ids.to(device)
    positions = torch.arange(tokens.shape[1], device=device).unsqueeze(0).expand_as(tokens)
    collected: list[torch.Tensor] = []

    def forward_step(data_iterator, chunk):
        output = chunk(tokens, positions, attention_mask=None)

        def keep(output_tensor, non_loss_data=False):
            logits = gather_from_tensor_model_parallel_region(output_tensor).float()
            collected.append(logits[..., :vocab_size] if vocab_size else logits)
            return logits.new_zeros(())

        return output, keep

    for chunk in model_chunks:
        chunk.eval()
    get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=[iter([None]) for _ in model_chunks] if len(model_chunks) > 1 else iter([None]),
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=1,
        seq_length=tokens.shape[1],
        micro_batch_size=tokens.shape[0],
        forward_only=True,
        collect_non_loss_data=True,
    )
    return collected[0] if mpu.is_pipeline_last_stage() and collected else None


@torch.no_grad()
def greedy_generate(model_chunks: list[torch.nn.Module], input_ids: torch.Tensor, max_new_tokens: int,
                    vocab_size: int | None = None) -> torch.Tensor:
    """Greedy continuation (no KV cache: re-runs the prefix each step), identical on every rank."""
    import torch.distributed as dist
    from megatron.core import parallel_state as mpu

    tokens = input_ids.clone()
    for _ in range(max_new_tokens):
        logits = forward_logits(model_chunks, tokens, vocab_size)
        next_token = torch.zeros(tokens.shape[0], 1, dtype=tokens.dtype, device=tokens.device)
        if logits is not None:
            next_token = logits[:, -1].argmax(dim=-1, keepdim=True).to(tokens.device, tokens.dtype)
        if mpu.get_pipeline_model_parallel_world_size() > 1:
            src = mpu.get_pipeline_model_parallel_last_rank()
            dist.broadcast(next_token, src=src, group=mpu.get_pipeline_model_parallel_group())
        tokens = torch.cat([tokens, next_token], dim=1)
    return tokens
