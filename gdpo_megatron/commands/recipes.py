"""`gdpo recipes [DIR]`: the shipped recipes with model, task, algorithm, shape and layout."""

from __future__ import annotations

import argparse
import json

from gdpo_megatron.recipe_index import default_recipes_dir, index_recipes


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("recipes", help="list recipes: model, task, algorithm, nodes x GPUs, layout")
    parser.add_argument("directory", nargs="?", default=None, help="recipes folder (default: the project's recipes/)")
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=_recipes)


def _recipes(args: argparse.Namespace) -> int:
    rows = index_recipes(args.directory or default_recipes_dir())
    if args.json:
        print(json.dumps([vars(r) for r in rows], indent=2))
        return 0
    headers = ("recipe", "model", "task", "algorithm", "shape", "layout")
    table = [headers] + [(r.path, r.model, r.task, r.algorithm, r.shape, r.layout) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
