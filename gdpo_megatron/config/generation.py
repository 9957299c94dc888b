"""The `generation` section: rollout backend, engines and sampling.

Owned by the generation work (issue 4); extend here, keep every field documented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .schema import Section, option


@dataclass
class SamplingConfig(Section):
    """Sampling settings for training rollouts."""

    temperature: float = option(1.0, ge=0, doc="softmax temperature (0 = greedy)")
    top_p: float = option(1.0, gt=0, le=1, doc="nucleus sampling mass")
    top_k: int = option(-1, ge=-1, doc="top-k sampling (-1 disables)")
    max_new_tokens: int = option(1024, ge=1, doc="longest response")
    stop: list[str] = option(default_factory=list, doc="stop strings")
    seed: Optional[int] = option(None, doc="sampling seed (null: derived from the run seed and step)")


@dataclass
class GenerationConfig(Section):
    """Which engines produce rollouts and where they run."""

    backend: Literal["vllm", "megatron"] = option("vllm", doc="vllm (default) or megatron-core's inference engine")
    num_engines: int = option(1, ge=1, doc="number of vLLM engines")
    tensor_parallel: int = option(1, ge=1, doc="tensor-parallel size of each engine")
    colocated: bool = option(True, doc="engines share GPUs with the policy (sleep during training)")
    gpu_memory_utilization: float = option(0.5, gt=0, le=1, doc="fraction of device memory an engine may use")
    sampling: SamplingConfig = option(default_factory=SamplingConfig, doc="sampling settings")
