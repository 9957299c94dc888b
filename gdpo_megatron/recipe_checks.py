"""Load a recipe and check everything about it that needs the registries, before anything runs.

`config/` only describes: it checks types, ranges and cross-field rules that need nothing
but the recipe itself. The names a recipe refers to (advantage estimator, policy loss, GPU kind,
synthetic-task options) are owned by the registries and the modules that define them, so they are resolved here, one level above both, and every entry
point (`gdpo config show`, `gdpo plan`, `gdpo launch`, `gdpo train`) loads recipes through
`load_checked_recipe`. Errors name the dotted key and the file that set it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gdpo_megatron.config.errors import ConfigError, did_you_mean
from gdpo_megatron.config.loader import apply_overrides, load_recipe_file
from gdpo_megatron.config.recipe import RecipeConfig, build_recipe
from gdpo_megatron.config.schema import to_dict
from gdpo_megatron.registry import Registry

SourceOf = Callable[[str], str]


def _fail(key: str, message: str, source_of: SourceOf) -> None:
    raise ConfigError(f"{key}: {message} (set in {source_of(key)})")


def _unknown(registry: Registry, kind: str, name: str) -> str:
    return f"unknown {kind} {name!r}{did_you_mean(name, registry)}; registered: {', '.join(registry.names())}"


def check_estimator(recipe: RecipeConfig, source_of: SourceOf) -> None:
    from gdpo_megatron.algorithms.advantages import ESTIMATORS

    algorithm = recipe.algorithm
    if algorithm.estimator not in ESTIMATORS:
        _fail("algorithm.estimator", _unknown(ESTIMATORS, "estimator", algorithm.estimator), source_of)
    for key, value in ESTIMATORS.get(algorithm.estimator).fixed.items():
        chosen = getattr(algorithm, key)
        if chosen is not None and chosen != value:
            _fail(f"algorithm.{key}",
                  f"estimator {algorithm.estimator!r} always uses {key}={value!r}, got {chosen!r}; "
                  f"leave {key} unset (null) or pick another estimator", source_of)


def check_loss(recipe: RecipeConfig, source_of: SourceOf) -> None:
    from gdpo_megatron.algorithms.losses import POLICY_LOSSES

    loss_type = recipe.algorithm.loss.type
    if loss_type not in POLICY_LOSSES:
        _fail("algorithm.loss.type", _unknown(POLICY_LOSSES, "loss", loss_type), source_of)


def check_gpu_kind(recipe: RecipeConfig, source_of: SourceOf) -> None:
    from gdpo_megatron.planner.gpus import gpu_kind

    cluster = recipe.cluster
    if cluster.gpus_per_node > 0:
        try:
            gpu_kind(cluster.gpu_type, cluster.gpu_memory_gib)
        except ConfigError as exc:
            _fail("cluster.gpu_type", str(exc).removeprefix("gpu_type: "), source_of)


def check_synthetic_options(recipe: RecipeConfig, source_of: SourceOf) -> None:
    from gdpo_megatron.data.synthetic import DEFAULTS

    data = recipe.data
    if data.task != "synthetic":
        return
    unknown = sorted(set(data.args) - set(DEFAULTS))
    if unknown:
        _fail(f"data.args.{unknown[0]}", f"unknown synthetic option {unknown[0]!r}"
              f"{did_you_mean(unknown[0], DEFAULTS)}; known: {', '.join(sorted(DEFAULTS))}", source_of)


CHECKS: tuple[Callable[[RecipeConfig, SourceOf], None], ...] = (
    check_estimator, check_loss, check_gpu_kind, check_synthetic_options)


def check_recipe(recipe: RecipeConfig, source_of: SourceOf = lambda _: "defaults") -> RecipeConfig:
    """Run every registry-side check on an already schema-valid recipe; returns it unchanged."""
    for check in CHECKS:
        check(recipe, source_of)
    return recipe


def load_checked_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecipeConfig:
    """Load, merge, override, validate and check a recipe. Raises ConfigError with a readable message."""
    loaded = apply_overrides(load_recipe_file(path), list(overrides), skeleton=to_dict(RecipeConfig()))
    return check_recipe(build_recipe(loaded), loaded.source_of)
