"""Argument conventions shared by the subcommands."""

from __future__ import annotations

import argparse


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """RECIPE plus trailing `key=value` / `+key=value` overrides."""
    parser.add_argument("recipe", help="recipe YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. trainer.max_steps=10 (+key=value adds a new key)")
