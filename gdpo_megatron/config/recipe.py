"""The whole recipe: one typed object composed of the sections, and how to load it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from .algorithm import AlgorithmConfig
from .cluster import ClusterConfig
from .data import DataConfig
from .errors import ConfigError
from .generation import COLOCATED_COLLECTIVE, GenerationConfig
from .loader import LoadedConfig, apply_overrides, load_recipe_file
from .policy import PolicyConfig
from .schema import Section, build, option, to_dict
from .scoring import ScoringConfig
from .trainer import TrainerConfig
from .warmstart import WarmstartConfig


@dataclass
class RecipeConfig(Section):
    """A complete run description; `gdpo config reference` lists every key."""

    name: str = option("unnamed", doc="run name (used for the run directory and loggers)")
    seed: int = option(1234, doc="global seed")
    algorithm: AlgorithmConfig = option(default_factory=AlgorithmConfig, doc="advantages, rewards and loss")
    policy: PolicyConfig = option(default_factory=PolicyConfig, doc="the trained model")
    generation: GenerationConfig = option(default_factory=GenerationConfig, doc="rollout engines")
    data: DataConfig = option(default_factory=DataConfig, doc="prompts")
    scoring: ScoringConfig = option(default_factory=ScoringConfig, doc="reward execution")
    trainer: TrainerConfig = option(default_factory=TrainerConfig, doc="the RL loop")
    cluster: ClusterConfig = option(default_factory=ClusterConfig, doc="machine shape")
    warmstart: WarmstartConfig = option(default_factory=WarmstartConfig, doc="supervised warm start of a fresh model")

    def validate(self) -> None:
        gen = self.generation
        if gen.refit.transport == "collective" and gen.colocated and not self.cluster.is_cpu:
            raise ConfigError(f"generation.refit.transport: {COLOCATED_COLLECTIVE}")
        sampling = gen.sampling
        if self.trainer.overlong_filtering and sampling.min_new_tokens >= sampling.max_new_tokens:
            raise ConfigError("trainer.overlong_filtering: every response is cut at max_new_tokens when "
                              f"generation.sampling.min_new_tokens ({sampling.min_new_tokens}) reaches it, so none "
                              "would be trained on")
        if self.trainer.overlap_generation and gen.backend != "vllm":
            raise ConfigError("trainer.overlap_generation: the megatron backend generates inside the policy workers, "
                              "which cannot train at the same time; use generation.backend vllm")
        if self.trainer.overlap_generation and gen.colocated:
            raise ConfigError("trainer.overlap_generation: colocated engines sleep while the policy trains; set "
                              "generation.colocated false (engines on their own devices) to overlap them")
        group_filter = self.algorithm.group_filter
        sampled = self.trainer.rollouts_per_prompt
        if group_filter.enabled:
            retained = [group_filter.retain] if group_filter.retain is not None else group_filter.adaptive.retain
            if max(retained) > sampled:
                raise ConfigError(f"algorithm.group_filter: keeps up to {max(retained)} rollouts per prompt but "
                                  f"trainer.rollouts_per_prompt (G', the rollouts sampled) is {sampled}; "
                                  f"raise rollouts_per_prompt or lower the retained k")
            fewest = self.trainer.prompts_per_step * min(retained)
            if self.trainer.mini_batches_per_step > fewest:
                raise ConfigError(f"trainer.mini_batches_per_step: {self.trainer.mini_batches_per_step} exceeds the "
                                  f"fewest rollouts a step can train on after the group filter ({fewest})")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Load, merge, override and validate a recipe. Raises ConfigError with a readable message."""
    loaded = apply_overrides(load_recipe_file(path), list(overrides), skeleton=to_dict(RecipeConfig()))
    return build_recipe(loaded)


def build_recipe(loaded: LoadedConfig) -> RecipeConfig:
    return build(RecipeConfig, loaded.data, loaded.source_of)


def recipe_to_yaml(config: RecipeConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, default_flow_style=False)
