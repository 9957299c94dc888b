"""The generation interface the trainer uses, and the registry of backends.

    backend = create_backend(recipe, model_path)
    rollouts = backend.generate(prompt_token_ids, sampling)   # grouped: prompt 0's n rollouts first
    stats = backend.update_weights(policy.export_hf_weights()) # after every optimizer step
    backend.close()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Protocol, runtime_checkable

import torch

from gdpo_megatron.registry import Registry

from .types import RefitStats, Rollout, SamplingSettings

if TYPE_CHECKING:
    from gdpo_megatron.config.recipe import RecipeConfig


@runtime_checkable
class GenerationBackend(Protocol):
    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingSettings) -> list[Rollout]:
        """n rollouts per prompt, prompt-major: all of prompt 0's, then prompt 1's, ..."""

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> RefitStats:
        """Replace every engine's weights with HF-named tensors; returns what moved and how long it took."""

    def sleep(self, level: int = 1) -> set[str]:
        """Release the engine's memory for training (colocated engines); returns what is asleep."""

    def wake(self, tags=None) -> set[str]:
        """Undo sleep for `tags` ("weights", "kv_cache"; None: all) before refit/generate; returns what still sleeps."""

    def close(self) -> None:
        """Stop engines and free their memory."""


# name -> factory(recipe, model_path, **kwargs) -> GenerationBackend
BACKENDS: Registry[Any] = Registry("generation backend")


def create_backend(recipe: "RecipeConfig", model_path: str, **kwargs: Any) -> GenerationBackend:
    """The backend `recipe.generation.backend` names, loaded from the HF checkpoint at `model_path`."""
    from . import megatron_backend, vllm_backend  # noqa: F401  (registration)

    factory = BACKENDS.get(recipe.generation.backend)
    return factory(recipe, model_path, **kwargs)
