"""`gdpo launch RECIPE [overrides] --cluster CLUSTER.yaml [--dryrun]`: plan, then submit via nemo-run."""

from __future__ import annotations

import argparse

from gdpo_megatron.config import ConfigError

from ._common import add_recipe_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("launch", help="submit a recipe to Slurm (Ray across the nodes) or run it locally")
    add_recipe_arguments(parser)
    parser.add_argument("--cluster", required=True, metavar="CLUSTER.yaml",
                        help="cluster profile (see clusters/)")
    parser.add_argument("--dryrun", action="store_true", help="write the sbatch/task scripts and print them; submit nothing")
    parser.add_argument("--force", action="store_true", help="launch even if `gdpo plan` says it does not fit")
    parser.set_defaults(func=_launch)


def _launch(args: argparse.Namespace) -> int:
    from gdpo_megatron.submission import load_profile, make_spec, submit
    from gdpo_megatron.planner import format_plan, make_plan

    profile = load_profile(args.cluster)
    spec = make_spec(args.recipe, args.overrides, profile)
    if profile.executor == "slurm":
        plan = make_plan(spec.recipe)
        if not plan.fits:
            print(format_plan(plan))
            if not args.force:
                print("gdpo launch: the plan does not fit (see above); fix the recipe or pass --force")
                return 1
    try:
        result = submit(spec, dryrun=args.dryrun)
    except ImportError as exc:
        raise ConfigError(f"nemo-run is needed for `gdpo launch` ({exc}); see docs/launching.md") from None
    print(f"run directory: {spec.run_dir}")
    print(f"train command: {' '.join(spec.train_command)}")
    print(f"experiment:    {result.experiment_dir}")
    if args.dryrun:
        for path in result.files:
            if path.suffix == ".sh":
                print(f"\n# ---- {path} ----\n{path.read_text()}")
    return 0
