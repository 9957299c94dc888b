"""Supervised warm start: train a fresh Llama-shaped HF model (or fine-tune `hf_path`) on demonstrations.

The embedded tiny recipe starts RL from a model that has seen the task's answer
format but is far from optimal on every reward, so that GDPO has something to learn
within minutes on a CPU. The result is a plain HF checkpoint (config.json,
model.safetensors, tokenizer files) that Megatron imports and vLLM loads.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from gdpo_megatron.config.policy import ModelConfig
from gdpo_megatron.config.warmstart import WarmstartConfig

COMPLETE_MARKER = "warmstart.json"


@dataclass
class Demonstration:
    prompt: str  # already rendered with the chat template
    response: str  # the target completion, ending where generation should stop


def build_hf_config(model: ModelConfig, tokenizer):
    """The HF config of a fresh model with `model`'s sizes and the tokenizer's vocabulary and special ids.

    Uses the same ModelConfig -> config.json mapping as checkpoint export, so the warm-started
    model is exactly what Megatron imports and vLLM loads.
    """
    from transformers import AutoConfig

    from gdpo_megatron.config.policy import PolicyConfig
    from gdpo_megatron.conversion.exporter import hf_config_dict
    from gdpo_megatron.policy.model import resolve_model_config

    sized = replace(model, vocab_size=model.vocab_size or len(tokenizer), family=model.family or "llama")
    config = hf_config_dict(resolve_model_config(PolicyConfig(model=sized)))
    return AutoConfig.for_model(config.pop("model_type"), **config, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _encode(demos: Sequence[Demonstration], tokenizer) -> list[tuple[list[int], int]]:
    """Token ids of prompt + response + eos, and where the response starts."""
    encoded = []
    for demo in demos:
        prompt_ids = tokenizer(demo.prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(demo.response, add_special_tokens=False)["input_ids"]
        encoded.append((prompt_ids + response_ids + [tokenizer.eos_token_id], len(prompt_ids)))
    return encoded


def _batch(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    tokens = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, start) in enumerate(examples):
        tokens[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, start: len(ids)] = torch.tensor(ids[start:])  # loss on the response only
    return tokens, attention, labels


def run_warmstart(
    model_config: ModelConfig,
    settings: WarmstartConfig,
    tokenizer,
    demonstrations: Sequence[Demonstration],
    out_dir: Path,
    seed: int,
    log: Callable[[str], None] = print,
) -> Path:
    """Train and save the initial policy to `out_dir`; reuse it if a finished one is there."""
    out_dir = Path(out_dir)
    if (out_dir / COMPLETE_MARKER).is_file():
        log(f"[warmstart] reusing {out_dir}")
        return out_dir
    # The warm start runs in the driver before any worker process exists, so it may use every core
    # the process is allowed (the driver itself keeps one thread otherwise: OMP_NUM_THREADS=1).
    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        return _train_and_save(model_config, settings, tokenizer, demonstrations, out_dir, seed, log)
    finally:
        torch.set_num_threads(threads)


def _train_and_save(model_config: ModelConfig, settings: WarmstartConfig, tokenizer,
                    demonstrations: Sequence[Demonstration], out_dir: Path, seed: int,
                    log: Callable[[str], None]) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if model_config.hf_path:
        model = AutoModelForCausalLM.from_pretrained(model_config.hf_path, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(build_hf_config(model_config, tokenizer))
    model.train()
    examples = _encode(demonstrations, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0, betas=(0.9, 0.98))
    warmup = max(1, settings.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return settings.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, settings.steps - warmup)
        return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    generator = torch.Generator().manual_seed(seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"[warmstart] {n_params / 1e6:.2f}M parameters, {len(examples)} demonstrations, {settings.steps} steps, "
        f"{torch.get_num_threads()} threads")
    start = time.perf_counter()
    for step in range(settings.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        picks = torch.randint(len(examples), (settings.batch_size,), generator=generator).tolist()
        tokens, attention, labels = _batch([examples[i] for i in picks], tokenizer.pad_token_id)
        loss = model(input_ids=tokens, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % max(1, settings.steps // 10) == 0 or step == settings.steps - 1:
            log(f"[warmstart] step {step + 1}/{settings.steps} loss {loss.item():.4f} "
                f"({time.perf_counter() - start:.0f}s)")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / COMPLETE_MARKER).write_text(json.dumps({"steps": settings.steps, "final_loss": loss.item(),
                                                       "parameters": n_params}))
    return out_dir
