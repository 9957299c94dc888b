"""The parallel-layout rules: which tensor/pipeline/virtual-pipeline splits a model allows.

One module for every caller: the model builder (`policy.model.build_model`), the process
setup (`distributed.setup`), the Ray placement (`orchestration.cluster`) and the planner
(`gdpo plan`) all ask the same functions, so a layout the planner accepts is exactly one
the builder builds.

`layout_problems` and `world_problems` return every rule a layout breaks, as
`LayoutProblem(key, message, hint)` (the planner turns them into findings); the
`validate_*` functions raise the first one as a ConfigError naming the recipe keys and
numbers, e.g. `policy.model.num_query_groups=2 is not divisible by policy.parallel.tensor=4`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.policy import ParallelConfig

_TP = "policy.parallel.tensor"
_PP = "policy.parallel.pipeline"
_VP = "policy.parallel.virtual_pipeline"
_SP = "policy.parallel.sequence_parallel"
_FIRST = "policy.parallel.first_stage_layers"
_LAST = "policy.parallel.last_stage_layers"


class ModelShape(Protocol):
    """What the rules read of a model: a resolved `ModelConfig` or the planner's `ModelArch`."""

    num_layers: int
    num_attention_heads: int
    num_query_groups: Optional[int]
    ffn_hidden_size: int


@dataclass(frozen=True)
class LayoutProblem:
    key: str       # the recipe key to change
    message: str   # what is wrong, with the numbers
    hint: str = ""  # what would work

    def error(self) -> ConfigError:
        return ConfigError(self.message + (f"; {self.hint}" if self.hint else ""))


def world_problems(parallel: ParallelConfig, world_size: int, what: str = "world size") -> list[LayoutProblem]:
    """The policy's processes must be a multiple of tensor x pipeline (the rest is data parallel)."""
    model_parallel = parallel.tensor * parallel.pipeline
    if world_size < 1 or world_size % model_parallel:
        return [LayoutProblem(
            "policy.parallel",
            f"{what} {world_size} is not divisible by {_TP}={parallel.tensor} * {_PP}={parallel.pipeline} "
            f"= {model_parallel} (world = tensor * pipeline * data)",
            f"choose tensor x pipeline dividing {world_size}")]
    return []


def validate_world(parallel: ParallelConfig, world_size: int) -> int:
    """The data-parallel size world / (tensor x pipeline), or a ConfigError when it does not divide."""
    problems = world_problems(parallel, world_size)
    if problems:
        raise problems[0].error()
    return world_size // (parallel.tensor * parallel.pipeline)


def padded_vocab_size(vocab_size: int, tensor: int, multiple: int = 1) -> int:
    """Vocabulary rounded up so that each tensor-parallel rank holds an equal slice."""
    step = tensor * multiple
    return int(math.ceil(vocab_size / step) * step)


def _stage_split(num_layers: int, parallel: ParallelConfig) -> tuple[Optional[list[int]], Optional[LayoutProblem]]:
    pp = parallel.pipeline
    first, last = parallel.first_stage_layers, parallel.last_stage_layers
    if pp == 1:
        if first is not None or last is not None:
            return None, LayoutProblem(_FIRST if first is not None else _LAST,
                                       f"{_FIRST}/{_LAST} need {_PP} > 1, got {_PP}=1", f"unset them or raise {_PP}")
        return [num_layers], None
    if first is None and last is None:
        if num_layers % pp:
            return None, LayoutProblem(
                _PP, f"policy.model.num_layers={num_layers} is not divisible by {_PP}={pp}",
                f"choose another pipeline size or set {_FIRST} / {_LAST} for an uneven split")
        return [num_layers // pp] * pp, None
    if parallel.virtual_pipeline is not None:
        return None, LayoutProblem(_VP, f"{_FIRST}/{_LAST} cannot be combined with {_VP}={parallel.virtual_pipeline}",
                                   f"set {_VP}=null or drop the uneven split")
    fixed = (first or 0) + (last or 0)
    middle_stages = pp - (first is not None) - (last is not None)
    rest = num_layers - fixed
    if rest < 0 or (middle_stages == 0 and rest != 0):
        return None, LayoutProblem(
            _FIRST if first is not None else _LAST,
            f"{_FIRST}={first} + {_LAST}={last} do not add up with policy.model.num_layers={num_layers} "
            f"over {_PP}={pp} stages")
    if middle_stages and rest % middle_stages:
        return None, LayoutProblem(
            _FIRST if first is not None else _LAST,
            f"policy.model.num_layers={num_layers} minus {_FIRST}={first} and {_LAST}={last} leaves {rest} "
            f"layers, not divisible over the remaining {middle_stages} pipeline stages")
    per_middle = rest // middle_stages if middle_stages else 0
    counts = [per_middle] * pp
    if first is not None:
        counts[0] = first
    if last is not None:
        counts[-1] = last
    return counts, None


def stage_layer_counts(num_layers: int, parallel: ParallelConfig) -> list[int]:
    """Transformer layers per pipeline stage (even, or with first/last stage sizes set)."""
    counts, problem = _stage_split(num_layers, parallel)
    if problem is not None:
        raise problem.error()
    return counts


def layout_problems(model: ModelShape, parallel: ParallelConfig) -> list[LayoutProblem]:
    """Every rule the (resolved) model breaks under `parallel`; empty when it can be built."""
    out: list[LayoutProblem] = []
    tp, pp, vp = parallel.tensor, parallel.pipeline, parallel.virtual_pipeline
    heads = model.num_attention_heads
    groups = model.num_query_groups or heads
    if heads % tp:
        out.append(LayoutProblem(_TP, f"policy.model.num_attention_heads={heads} is not divisible by {_TP}={tp}",
                                 f"use a tensor size dividing {heads}"))
    if groups % tp:
        out.append(LayoutProblem(_TP, f"policy.model.num_query_groups={groups} (KV heads) is not divisible by "
                                      f"{_TP}={tp}", f"use a tensor size that divides {groups}"))
    if heads % groups:
        out.append(LayoutProblem("policy.model.num_query_groups",
                                 f"policy.model.num_attention_heads={heads} is not a multiple of "
                                 f"policy.model.num_query_groups={groups}"))
    if model.ffn_hidden_size % tp:
        out.append(LayoutProblem(_TP, f"policy.model.ffn_hidden_size={model.ffn_hidden_size} is not divisible by "
                                      f"{_TP}={tp}", f"use a tensor size dividing {model.ffn_hidden_size}"))
    counts, problem = _stage_split(model.num_layers, parallel)
    if problem is not None:
        out.append(problem)
    elif any(c == 0 for c in counts):
        out.append(LayoutProblem(_PP, f"pipeline stages would get {counts} layers; every stage needs at least one "
                                      f"(policy.model.num_layers={model.num_layers}, {_PP}={pp})"))
    if vp is not None:
        if pp < 2:
            out.append(LayoutProblem(_VP, f"{_VP}={vp} needs {_PP} > 1, got {_PP}={pp}", f"set {_VP}=null"))
        elif counts is not None and counts[0] % vp:
            out.append(LayoutProblem(
                _VP, f"{counts[0]} layers per pipeline stage (policy.model.num_layers={model.num_layers} / "
                     f"{_PP}={pp}) are not divisible by {_VP}={vp}"))
    if parallel.sequence_parallel and tp == 1:
        out.append(LayoutProblem(_SP, f"{_SP} needs {_TP} > 1, got {_TP}=1", f"set {_SP}=false"))
    return out


def host_problems(parallel: ParallelConfig, cuda_available: bool) -> list[LayoutProblem]:
    """Rules about the machine the model is built on (the planner plans for the cluster's GPUs)."""
    if parallel.sequence_parallel and not cuda_available:
        return [LayoutProblem(_SP, f"{_SP} needs CUDA (Transformer Engine/APEX fused kernels)",
                              "set it to false on a CPU host")]
    return []


def validate_layout(model: ModelShape, parallel: ParallelConfig, world_size: int | None = None,
                    cuda_available: bool | None = None) -> None:
    """Raise ConfigError if the (resolved) model cannot be split as `parallel` asks on this host."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    problems = world_problems(parallel, world_size) if world_size is not None else []
    problems += layout_problems(model, parallel) + host_problems(parallel, cuda_available)
    if problems:
        raise problems[0].error()
