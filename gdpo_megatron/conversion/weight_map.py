"""Which HF tensors each Megatron parameter of a model chunk corresponds to, and how it is split.

Kinds of split (the Megatron parameter is this TP rank's piece of the full tensor):
  replicated  same on every TP rank (norms, qk-norm)
  row         split along dim 1 (linear_proj, linear_fc2)
  vocab       split along dim 0 after zero-padding the vocabulary (embedding, output layer)
  qkv         grouped Q/K/V fusion, split along dim 0 by whole KV groups (weight or bias)
  gate_up     SwiGLU fc1: each rank holds [gate shard; up shard]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gdpo_megatron.config.policy import ModelConfig

from .families import HFNames

_LAYER_RULES = {
    # local spec names, then TE spec names (TE fuses the pre-norms into the next linear)
    "input_layernorm.weight": ("replicated", ("input_norm",)),
    "self_attention.linear_qkv.layer_norm_weight": ("replicated", ("input_norm",)),
    "self_attention.linear_qkv.weight": ("qkv", ("q_proj", "k_proj", "v_proj")),
    "self_attention.linear_qkv.bias": ("qkv", ("q_proj", "k_proj", "v_proj")),
    "self_attention.q_layernorm.weight": ("replicated", ("q_norm",)),
    "self_attention.k_layernorm.weight": ("replicated", ("k_norm",)),
    "self_attention.linear_proj.weight": ("row", ("o_proj",)),
    "pre_mlp_layernorm.weight": ("replicated", ("post_attention_norm",)),
    "mlp.linear_fc1.layer_norm_weight": ("replicated", ("post_attention_norm",)),
    "mlp.linear_fc1.weight": ("gate_up", ("gate_proj", "up_proj")),
    "mlp.linear_fc2.weight": ("row", ("down_proj",)),
}
_LAYER_ORDER = {suffix: n for n, suffix in enumerate(_LAYER_RULES)}


@dataclass
class ParamEntry:
    key: str                      # unique over the whole model, e.g. "layers.3.mlp.linear_fc1.weight"
    order: tuple[int, int, int]   # global position: (section, layer, rule) -> identical on every rank
    param: torch.Tensor
    kind: str
    hf_names: tuple[str, ...]
    export: bool = True           # False for the tied output layer copy on the last PP stage


def _fill(template: str, layer: int, kind: str) -> str:
    return template.format(i=layer, kind=kind)


def chunk_entries(gpt: torch.nn.Module, model: ModelConfig, names: HFNames) -> list[ParamEntry]:
    """Entries for every parameter of one unwrapped GPTModel chunk; unknown names are an error."""
    entries = []
    layers = gpt.decoder.layers if hasattr(gpt, "decoder") else []
    for name, param in gpt.named_parameters():
        if name == "embedding.word_embeddings.weight":
            entries.append(ParamEntry("embedding", (0, 0, 0), param, "vocab", (names.embedding,)))
        elif name == "decoder.final_layernorm.weight":
            entries.append(ParamEntry("final_norm", (2, 0, 0), param, "replicated", (names.final_norm,)))
        elif name == "output_layer.weight":
            source = names.embedding if model.tie_embeddings else names.lm_head
            entries.append(ParamEntry("output_layer", (3, 0, 0), param, "vocab", (source,),
                                      export=not model.tie_embeddings))
        elif name.startswith("decoder.layers."):
            local, suffix = name[len("decoder.layers."):].split(".", 1)
            if suffix not in _LAYER_RULES:
                raise KeyError(f"conversion: no HF mapping for Megatron parameter {name!r}")
            layer = layers[int(local)].layer_number - 1
            kind, fields = _LAYER_RULES[suffix]
            tensor_kind = "bias" if suffix.endswith(".bias") else "weight"
            hf = tuple(_fill(getattr(names, f), layer, tensor_kind) for f in fields)
            entries.append(ParamEntry(f"layers.{layer}.{suffix}", (1, layer, _LAYER_ORDER[suffix]), param, kind, hf))
        else:
            raise KeyError(f"conversion: no HF mapping for Megatron parameter {name!r}")
    return entries
