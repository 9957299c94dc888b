"""Read an HF checkpoint's config.json (Llama, Qwen2, Qwen3) into `policy.model` fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gdpo_megatron.config.errors import ConfigError

# HF `model_type` -> our family name (the key of the conversion mapping registry).
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


def read_config_json(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"policy.model.hf_path: {hf_dir} has no config.json (expected an HF checkpoint directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def _rope_scaling(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    # transformers >= 5 writes `rope_parameters` (with rope_type), older ones `rope_scaling`.
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if not scaling:
        return {"type": "none"}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return {"type": "none"}
    if kind == "linear":
        return {"type": "linear", "factor": float(scaling["factor"])}
    if kind == "llama3":
        return {
            "type": "llama3",
            "factor": float(scaling["factor"]),
            "low_freq_factor": float(scaling.get("low_freq_factor", 1.0)),
            "high_freq_factor": float(scaling.get("high_freq_factor", 4.0)),
            "original_max_position_embeddings": int(scaling.get("original_max_position_embeddings", 8192)),
        }
    raise ConfigError(f"{path}: rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")


def model_fields_from_hf(hf_dir: str | Path) -> dict[str, Any]:
    """`policy.model` fields (as plain values) described by `hf_dir/config.json`."""
    path = Path(hf_dir) / "config.json"
    cfg = read_config_json(hf_dir)
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"{path}: model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
    family = MODEL_TYPES[model_type]
    if cfg.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{path}: hidden_act {cfg.get('hidden_act')!r} is not supported (SwiGLU/silu only)")
    # rope_theta moved into rope_parameters in newer transformers; accept either place.
    rope_theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    heads = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    return {
        "family": family,
        "num_layers": int(cfg["num_hidden_layers"]),
        "hidden_size": hidden,
        "ffn_hidden_size": int(cfg["intermediate_size"]),
        "num_attention_heads": heads,
        "num_query_groups": int(cfg.get("num_key_value_heads") or heads),
        "vocab_size": int(cfg["vocab_size"]),
        "max_position_embeddings": int(cfg.get("max_position_embeddings", 4096)),
        "rope_theta": float(rope_theta),
        "norm_epsilon": float(cfg.get("rms_norm_eps", 1e-6)),
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", False)),
        "head_dim": int(cfg.get("head_dim") or hidden // heads),
        # Qwen2 always has Q/K/V bias and its config has no key for it.
        "qkv_bias": family == "qwen2" or bool(cfg.get("attention_bias", False)),
        "qk_norm": family == "qwen3",
        "rope_scaling": _rope_scaling(cfg, path),
    }
