"""HF parameter names per architecture family; a new Llama-shaped family is one entry.

The Megatron side is the same for every family (megatron-core GPTModel, local or TE spec);
what differs between HF families is only how their checkpoints name the tensors, and which
optional tensors exist (qkv bias, qk-norm), which the model config decides.
"""

from __future__ import annotations

from dataclasses import dataclass

from gdpo_megatron.registry import Registry


@dataclass(frozen=True)
class HFNames:
    """HF tensor names; `{i}` is the global layer index."""

    embedding: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"
    input_norm: str = "model.layers.{i}.input_layernorm.weight"
    post_attention_norm: str = "model.layers.{i}.post_attention_layernorm.weight"
    q_proj: str = "model.layers.{i}.self_attn.q_proj.{kind}"
    k_proj: str = "model.layers.{i}.self_attn.k_proj.{kind}"
    v_proj: str = "model.layers.{i}.self_attn.v_proj.{kind}"
    o_proj: str = "model.layers.{i}.self_attn.o_proj.weight"
    q_norm: str = "model.layers.{i}.self_attn.q_norm.weight"
    k_norm: str = "model.layers.{i}.self_attn.k_norm.weight"
    gate_proj: str = "model.layers.{i}.mlp.gate_proj.weight"
    up_proj: str = "model.layers.{i}.mlp.up_proj.weight"
    down_proj: str = "model.layers.{i}.mlp.down_proj.weight"
    # transformers config class name written to config.json by save_hf_checkpoint
    architecture: str = "LlamaForCausalLM"
    model_type: str = "llama"


FAMILIES: Registry[HFNames] = Registry("architecture family")
FAMILIES.register("llama")(HFNames())
FAMILIES.register("qwen2")(HFNames(architecture="Qwen2ForCausalLM", model_type="qwen2"))
FAMILIES.register("qwen3")(HFNames(architecture="Qwen3ForCausalLM", model_type="qwen3"))
