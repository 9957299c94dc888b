"""`gdpo train RECIPE [overrides]`: run (or resume) a training run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gdpo_megatron.recipe_checks import load_checked_recipe

from ._common import add_recipe_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a policy with a recipe (resumes from the run directory's last checkpoint)")
    add_recipe_arguments(parser)
    parser.set_defaults(func=_train)


def run_directory(recipe) -> Path:
    return Path(recipe.trainer.run_dir) if recipe.trainer.run_dir else Path("runs") / recipe.name


def _train(args: argparse.Namespace) -> int:
    from gdpo_megatron.checkpointing import CheckpointError
    from gdpo_megatron.data import RecordError
    from gdpo_megatron.orchestration.failures import WorkerFailure
    from gdpo_megatron.trainer import Trainer

    recipe = load_checked_recipe(args.recipe, args.overrides, require_data_files=True)
    run_dir = run_directory(recipe)
    print(f"[train] {recipe.name}: {recipe.algorithm.estimator} with rewards "
          f"{', '.join(recipe.algorithm.reward_names)}; run directory {run_dir}", flush=True)
    try:
        return Trainer(recipe, run_dir).run()
    except (CheckpointError, RecordError, WorkerFailure) as exc:
        # Messages that already say what happened and what to do; a traceback adds nothing.
        print(f"gdpo train: {exc}", file=sys.stderr)
        return 1
