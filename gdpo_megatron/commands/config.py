"""`gdpo config show RECIPE [overrides]`: print the fully resolved recipe."""

from __future__ import annotations

import argparse

from gdpo_megatron.config import recipe_to_yaml
from gdpo_megatron.recipe_checks import load_checked_recipe
from gdpo_megatron.config.recipe import RecipeConfig
from gdpo_megatron.config.schema import describe

from ._common import add_recipe_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show resolved recipes and the config reference")
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the fully resolved recipe as YAML")
    add_recipe_arguments(show)
    show.set_defaults(func=_show)
    reference = actions.add_parser("reference", help="print every config key with type, default and meaning")
    reference.set_defaults(func=_reference)


def _show(args: argparse.Namespace) -> int:
    print(recipe_to_yaml(load_checked_recipe(args.recipe, args.overrides)), end="")
    return 0


def _reference(args: argparse.Namespace) -> int:
    for key, type_name, default, doc in describe(RecipeConfig):
        print(f"{key}  [{type_name}]  default={default!r}\n    {doc}")
    return 0
