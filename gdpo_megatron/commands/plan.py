"""`gdpo plan RECIPE [overrides] [--json]`: layout checks, per-GPU memory and the placement of every
worker (the same plan the trainer reserves); exit 1 if it does not fit."""

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

    from gdpo_megatron.orchestration.placement import PlacementError, format_placement, placement_shape

    recipe = load_checked_recipe(args.recipe, args.overrides)
    plan = make_plan(recipe)
    try:
        placement, placement_error = placement_shape(recipe), None
    except PlacementError as exc:
        placement, placement_error = None, str(exc)
    if args.json:
        out = plan.to_dict()
        out["placement"] = placement.to_dict() if placement is not None else {"error": placement_error}
        print(json.dumps(out, indent=2))
    else:
        print(format_plan(plan))
        print(format_placement(placement) if placement is not None else f"placement: error: {placement_error}")
    return 0 if plan.fits and placement is not None else 1
