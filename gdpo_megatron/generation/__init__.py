"""Rollout generation: backend protocol, vLLM engines with weight refit, megatron-core generation.

Importing this package does not import vLLM or megatron-core; `create_backend` loads the one needed.
"""

from .backend import BACKENDS, GenerationBackend, create_backend
from .mismatch import MismatchCheck, generation_mismatch, pad_logprobs
from .types import GenerationRequest, RefitStats, Rollout, SamplingSettings, check_grouped, sampling_from_config

__all__ = [
    "BACKENDS", "GenerationBackend", "GenerationRequest", "MismatchCheck", "RefitStats", "Rollout",
    "SamplingSettings", "check_grouped", "create_backend", "generation_mismatch", "pad_logprobs",
    "sampling_from_config",
]
