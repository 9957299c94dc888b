"""Load a recipe and check everything about it that needs the registries, before anything runs.

`config/` only describes: it checks types, ranges and cross-field rules that need nothing
but the recipe itself. The names a recipe refers to (advantage estimator, policy loss, reward functions and
their arguments, GPU kind, synthetic-task options) and its data files are owned by the
registries and the modules that read them, so they are resolved here, one level above
both, and every entry
point (`gdpo config show`, `gdpo plan`, `gdpo launch`, `gdpo train`) loads recipes through
`load_checked_recipe`. Errors name the dotted key and the file that set it.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Callable, Literal

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


def _check_choices(function: Callable, args: dict, key: str, name: str, source_of: SourceOf) -> None:
    """An argument annotated `Literal[...]` (e.g. a code reward's `isolation`) takes one of its values."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - unresolvable annotations of user code: nothing to check
        return
    for arg, value in args.items():
        hint = hints.get(arg)
        if typing.get_origin(hint) is Literal and value not in typing.get_args(hint):
            choices = ", ".join(repr(choice) for choice in typing.get_args(hint))
            _fail(f"{key}.{arg}", f"reward function {name!r} takes {arg} one of {choices}, got {value!r}", source_of)


def check_rewards(recipe: RecipeConfig, source_of: SourceOf) -> None:
    """Each reward names a registered function (after importing `scoring.reward_modules`), its
    `args` bind to that function's signature `fn(record, response, num_tokens, **args)`, and an
    argument annotated with a `Literal` takes one of its values."""
    from gdpo_megatron.rewards import REWARDS
    from gdpo_megatron.rewards._reward_worker import import_rewards

    modules = recipe.scoring.reward_modules
    for i, module in enumerate(modules):
        try:
            import_rewards([module])
        except Exception as exc:  # noqa: BLE001 - any import failure of user code is a config error
            _fail(f"scoring.reward_modules[{i}]", f"cannot import {module!r}: {type(exc).__name__}: {exc}", source_of)
    for i, reward in enumerate(recipe.algorithm.rewards):
        name = reward.function_name
        key = f"algorithm.rewards[{i}].{'function' if reward.function else 'name'}"
        if name not in REWARDS:
            hint = "" if modules else " (a custom reward's module goes in scoring.reward_modules)"
            _fail(key, _unknown(REWARDS, "reward function", name) + hint, source_of)
        function = REWARDS.get(name)
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
            continue
        try:
            signature.bind({}, "", 0, **reward.args)
        except TypeError as exc:
            accepted = [p for p in list(signature.parameters)[3:]
                        if signature.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                inspect.Parameter.VAR_KEYWORD)]
            _fail(f"algorithm.rewards[{i}].args",
                  f"reward function {name!r} does not accept these arguments ({exc}); "
                  f"it takes: {', '.join(accepted) or 'no arguments'}", source_of)
        _check_choices(function, reward.args, f"algorithm.rewards[{i}].args", name, source_of)


def check_data_files(recipe: RecipeConfig, source_of: SourceOf, require: bool = True) -> None:
    """Local data files parse for the task (hf:<name> datasets are read at run time). A missing
    file is an error only with `require` (training here); `gdpo plan` and `gdpo launch` plan
    for a cluster whose filesystem may hold files this machine does not."""
    from gdpo_megatron.data.datasets import read_records
    from gdpo_megatron.data.prepare import command_for
    from gdpo_megatron.data.records import RecordError

    data = recipe.data
    for split in ("train", "val"):
        path = getattr(data, f"{split}_path")
        if path is None or path.startswith("hf:") or data.format == "hf":
            continue
        key = f"data.{split}_path"
        if not Path(path).is_file():
            if require:
                command = command_for(path)
                made_by = f"; it is written by `{command}`" if command else ""
                _fail(key, f"no such data file: {path} (relative paths are read from {Path.cwd()}{made_by})",
                      source_of)
            continue
        try:
            read_records(path, data.task, data.format, data.hf_split)
        except RecordError as exc:
            _fail(key, str(exc), source_of)


CHECKS: tuple[Callable[[RecipeConfig, SourceOf], None], ...] = (
    check_estimator, check_loss, check_gpu_kind, check_synthetic_options, check_rewards)


def check_recipe(recipe: RecipeConfig, source_of: SourceOf = lambda _: "defaults",
                 require_data_files: bool = False) -> RecipeConfig:
    """Run every registry-side check on an already schema-valid recipe; returns it unchanged."""
    for check in CHECKS:
        check(recipe, source_of)
    check_data_files(recipe, source_of, require=require_data_files)
    return recipe


def load_checked_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                        require_data_files: bool = False) -> RecipeConfig:
    """Load, merge, override, validate and check a recipe. Raises ConfigError with a readable message.

    `require_data_files`: a data file missing on this machine is an error (`gdpo train`);
    otherwise only files that exist are parsed."""
    loaded = apply_overrides(load_recipe_file(path), list(overrides), skeleton=to_dict(RecipeConfig()))
    return check_recipe(build_recipe(loaded), loaded.source_of, require_data_files)
