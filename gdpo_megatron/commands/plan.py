"""`gdpo plan RECIPE [overrides] [--json]`: layout checks and per-GPU memory; exit 1 if it does not fit."""

from __future__ import annotations

import argparse
import json

from gdpo_megatron.recipe_checks import load_checked_recipe

from ._common import add_recipe_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plan", help="check a recipe's parallel layout and memory before launching")
    add_recipe_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the plan as JSON (bytes)")
    parser.set_defaults(func=_plan)


def _plan(args: argparse.Namespace) -> int:
    from gdpo_megatron.planner import format_plan, make_plan

    plan = make_plan(load_checked_recipe(args.recipe, args.overrides))
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(format_plan(plan))
    return 0 if plan.fits else 1
