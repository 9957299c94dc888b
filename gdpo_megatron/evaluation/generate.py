"""Generate responses for evaluation with vLLM (CPU build or GPU), in this process.

`resolve_model(path)` accepts an HF checkpoint directory or a run directory (its
`final_model/`, written when a run finishes); `generate_samples` renders each record with the
model's own chat template, samples k responses per prompt and reports progress per chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from gdpo_megatron.config.errors import ConfigError


@dataclass
class Generated:
    responses: list[list[str]]
    num_tokens: list[list[int]]
    truncated: float          # share of samples cut at max_new_tokens
    seconds: float


def resolve_model(path: str) -> Path:
    """An HF checkpoint directory: `path` itself, or a run directory's `final_model/`."""
    from gdpo_megatron.conversion.smollm2 import resolve_model_dir

    root = Path(resolve_model_dir(path)).expanduser()
    if (root / "config.json").is_file():
        return root
    if (root / "final_model" / "config.json").is_file():
        return root / "final_model"
    if (root / "checkpoints").is_dir():
        raise ConfigError(f"--model {path}: run directory without final_model/ (the run has not finished); "
                          "export a checkpoint with `gdpo convert megatron-to-hf` and pass that directory")
    raise ConfigError(f"--model {path}: neither an HF checkpoint directory (config.json) nor a run directory")


def within_prompt_limit(model_dir: Path, records: list[dict], max_tokens: int) -> list[dict]:
    """The records whose prompt, rendered with the model's chat template, has at most max_tokens tokens."""
    from transformers import AutoTokenizer

    from gdpo_megatron.data import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return [r for r in records
            if len(tokenizer(render_prompt(r, tokenizer), add_special_tokens=False)["input_ids"]) <= max_tokens]


def generate_samples(model_dir: Path, records: list[dict], samples: int, max_new_tokens: int,
                     temperature: float, seed: int, max_model_len: Optional[int] = None, chunk: int = 16,
                     kv_cache_mb: int = 256, log: Callable[[str], None] = print) -> Generated:
    from transformers import AutoTokenizer

    from gdpo_megatron.data import render_prompt
    from gdpo_megatron.generation.types import SamplingSettings
    from gdpo_megatron.generation.vllm_engine import EngineOptions, VllmEngine

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = [tokenizer(render_prompt(r, tokenizer), add_special_tokens=False)["input_ids"] for r in records]
    longest = max(len(p) for p in prompts) + max_new_tokens
    engine = VllmEngine(EngineOptions(model_path=str(model_dir), max_model_len=max_model_len or longest,
                                      max_num_seqs=max(1, min(64, chunk * samples)),
                                      cpu_kv_cache_bytes=kv_cache_mb * 2**20, seed=seed))
    log(f"[eval] engine ready in {engine.startup_seconds:.1f}s; {len(records)} prompts x {samples} samples")
    settings = SamplingSettings(n=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    responses: list[list[str]] = [[] for _ in records]
    tokens: list[list[int]] = [[] for _ in records]
    truncated = 0
    start = time.perf_counter()
    try:
        for first in range(0, len(records), chunk):
            batch = [(i, prompts[i]) for i in range(first, min(first + chunk, len(records)))]
            for rollout in engine.generate(batch, settings):
                responses[rollout.prompt_index].append(rollout.text)
                tokens[rollout.prompt_index].append(len(rollout.token_ids))
                truncated += rollout.finish_reason == "length"
            done = batch[-1][0] + 1
            elapsed = time.perf_counter() - start
            log(f"[eval] {done}/{len(records)} prompts generated, {elapsed:.1f}s, "
                f"eta {elapsed / done * (len(records) - done):.0f}s")
    finally:
        engine.close()
    return Generated(responses, tokens, truncated / max(1, len(records) * samples), time.perf_counter() - start)
