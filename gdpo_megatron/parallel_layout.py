"""Checks that a model fits a parallel layout, before anything is built.

Every failure is a ConfigError naming the recipe keys and the numbers involved, e.g.
`policy.model.num_query_groups=2 is not divisible by policy.parallel.tensor=4`.
"""

from __future__ import annotations

import math

import torch

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.policy import ModelConfig, ParallelConfig

_TP = "policy.parallel.tensor"
_PP = "policy.parallel.pipeline"
_VP = "policy.parallel.virtual_pipeline"
_FIRST = "policy.parallel.first_stage_layers"
_LAST = "policy.parallel.last_stage_layers"


def validate_world(parallel: ParallelConfig, world_size: int) -> int:
    """The data-parallel size; world must be a multiple of tensor * pipeline."""
    model_parallel = parallel.tensor * parallel.pipeline
    if world_size % model_parallel:
        raise ConfigError(
            f"world size {world_size} is not divisible by {_TP}={parallel.tensor} * {_PP}={parallel.pipeline} "
            f"= {model_parallel} (world = tensor * pipeline * data)")
    return world_size // model_parallel


def padded_vocab_size(vocab_size: int, tensor: int, multiple: int = 1) -> int:
    """Vocabulary rounded up so that each tensor-parallel rank holds an equal slice."""
    step = tensor * multiple
    return int(math.ceil(vocab_size / step) * step)


def stage_layer_counts(num_layers: int, parallel: ParallelConfig) -> list[int]:
    """Transformer layers per pipeline stage (validated; see `validate_layout`)."""
    pp = parallel.pipeline
    first, last = parallel.first_stage_layers, parallel.last_stage_layers
    if pp == 1:
        if first is not None or last is not None:
            raise ConfigError(f"{_FIRST}/{_LAST} need {_PP} > 1, got {_PP}=1")
        return [num_layers]
    if first is None and last is None:
        if num_layers % pp:
            raise ConfigError(
                f"policy.model.num_layers={num_layers} is not divisible by {_PP}={pp}; "
                f"choose another pipeline size or set {_FIRST} / {_LAST} for an uneven split")
        return [num_layers // pp] * pp
    if parallel.virtual_pipeline is not None:
        raise ConfigError(f"{_FIRST}/{_LAST} cannot be combined with {_VP}={parallel.virtual_pipeline}")
    fixed = (first or 0) + (last or 0)
    middle_stages = pp - (first is not None) - (last is not None)
    rest = num_layers - fixed
    if rest < 0 or (middle_stages == 0 and rest != 0):
        raise ConfigError(
            f"{_FIRST}={first} + {_LAST}={last} do not add up with policy.model.num_layers={num_layers} "
            f"over {_PP}={pp} stages")
    if middle_stages and rest % middle_stages:
        raise ConfigError(
            f"policy.model.num_layers={num_layers} minus {_FIRST}={first} and {_LAST}={last} leaves {rest} "
            f"layers, not divisible over the remaining {middle_stages} pipeline stages")
    per_middle = rest // middle_stages if middle_stages else 0
    counts = [per_middle] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    return counts


def validate_layout(model: ModelConfig, parallel: ParallelConfig, world_size: int | None = None) -> None:
    """Raise ConfigError if the (resolved) model cannot be split as `parallel` asks."""
    tp, pp = parallel.tensor, parallel.pipeline
    if world_size is not None:
        validate_world(parallel, world_size)
    heads = model.num_attention_heads
    groups = model.num_query_groups or heads
    if heads % tp:
        raise ConfigError(f"policy.model.num_attention_heads={heads} is not divisible by {_TP}={tp}")
    if groups % tp:
        raise ConfigError(
            f"policy.model.num_query_groups={groups} (KV heads) is not divisible by {_TP}={tp}; "
            f"use a tensor size that divides {groups}")
    if heads % groups:
        raise ConfigError(
            f"policy.model.num_attention_heads={heads} is not a multiple of policy.model.num_query_groups={groups}")
    if model.ffn_hidden_size % tp:
        raise ConfigError(f"policy.model.ffn_hidden_size={model.ffn_hidden_size} is not divisible by {_TP}={tp}")
    counts = stage_layer_counts(model.num_layers, parallel)
    if any(c == 0 for c in counts):
        raise ConfigError(f"pipeline stages would get {counts} layers; every stage needs at least one "
                          f"(policy.model.num_layers={model.num_layers}, {_PP}={pp})")
    vp = parallel.virtual_pipeline
    if vp is not None:
        if pp < 2:
            raise ConfigError(f"{_VP}={vp} needs {_PP} > 1, got {_PP}={pp}")
        if counts[0] % vp:
            raise ConfigError(
                f"{counts[0]} layers per pipeline stage (policy.model.num_layers={model.num_layers} / {_PP}={pp}) "
                f"are not divisible by {_VP}={vp}")
    if parallel.sequence_parallel:
        if tp == 1:
            raise ConfigError(f"policy.parallel.sequence_parallel needs {_TP} > 1, got {_TP}=1")
        if not torch.cuda.is_available():
            raise ConfigError("policy.parallel.sequence_parallel needs CUDA (Transformer Engine/APEX fused kernels); "
                              "set it to false on a CPU host")
