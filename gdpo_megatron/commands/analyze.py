"""`gdpo analyze`: the GDPO paper's advantage analysis.

    gdpo analyze groups --rewards 2 --rollouts 2..11 [--estimator grpo,gdpo] [--compare sorted|aligned] [--json]
    gdpo analyze example
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from gdpo_megatron.algorithms.analysis import ANALYSIS_ESTIMATORS, COMPARE_MODES, count_distinct_groups


def parse_range(text: str) -> list[int]:
    """'4' -> [4]; '2..11' -> [2, ..., 11] (inclusive); '2,4,8' -> [2, 4, 8]."""
    values: list[int] = []
    try:
        for part in text.split(","):
            if ".." in part:
                low, high = (int(p) for p in part.split("..", 1))
                if high < low:
                    raise argparse.ArgumentTypeError(f"empty range {part!r}: {high} < {low}")
                values.extend(range(low, high + 1))
            else:
                values.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N, A..B or a comma list, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {text!r}")
    return values


def parse_estimators(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ANALYSIS_ESTIMATORS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown estimator {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(ANALYSIS_ESTIMATORS)} (comma separated)")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("analyze", help="the GDPO paper's advantage analysis (distinct advantage groups)")
    actions = parser.add_subparsers(dest="analyze_command", metavar="ACTION", required=True)
    groups = actions.add_parser(
        "groups", help="count distinct advantage groups over all multisets of binary reward vectors",
        description="Enumerate every multiset of G rollouts with K binary rewards, normalize each as one group "
                    "and count the distinct advantage groups (by default as the GDPO paper does: a group is "
                    "the multiset of its advantage values; see docs/advantages.md).")
    groups.add_argument("--rewards", type=parse_range, required=True, metavar="K", help="number of rewards: 3, 1..6")
    groups.add_argument("--rollouts", type=parse_range, required=True, metavar="G", help="rollouts per group: 4, 2..11")
    groups.add_argument("--estimator", type=parse_estimators, default=["grpo", "gdpo"],
                        help=f"one or more of {', '.join(ANALYSIS_ESTIMATORS)}, comma separated (default grpo,gdpo)")
    groups.add_argument("--compare", choices=COMPARE_MODES, default="sorted",
                        help="sorted (default, the GDPO paper's Fig. 3): a group is the multiset of its advantage "
                             "values; aligned: advantages of the canonically ordered rollouts, position by position")
    groups.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    groups.set_defaults(func=_groups)
    example = actions.add_parser("example", help="the paper's toy case: totals (0,1) vs (0,2) under GRPO and GDPO")
    example.set_defaults(func=_example)


def _groups(args: argparse.Namespace) -> int:
    rows = []
    try:
        for k in args.rewards:
            for g in args.rollouts:
                for estimator in args.estimator:
                    rows.append(count_distinct_groups(k, g, estimator, args.compare))
    except ValueError as exc:
        print(f"gdpo analyze groups: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_json() for r in rows]))
        return 0
    print(f"distinct advantage groups (--compare {args.compare})")
    print(f"{'rewards':>7} {'rollouts':>8} {'estimator':>10} {'distinct_groups':>15} {'multisets':>10}")
    for r in rows:
        print(f"{r.rewards:>7} {r.rollouts:>8} {r.estimator:>10} {r.distinct_groups:>15} {r.multisets:>10}")
    return 0


def _example(args: argparse.Namespace) -> int:
    from gdpo_megatron.algorithms.advantages import compute_advantages
    from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec

    rewards = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    group_ids = torch.tensor([0, 0, 1, 1])
    specs = [RewardSpec(name="r1"), RewardSpec(name="r2")]
    exact = dict(group_eps=0.0)  # the paper's arithmetic, without the presets' epsilons
    grpo = compute_advantages(rewards, group_ids, AlgorithmConfig(estimator="grpo", rewards=specs, **exact))
    gdpo = compute_advantages(rewards, group_ids, AlgorithmConfig(estimator="gdpo", rewards=specs,
                                                                  batch_norm="none", **exact))
    gdpo_batch = compute_advantages(rewards, group_ids, AlgorithmConfig(estimator="gdpo", rewards=specs))
    print("Two binary rewards, two rollouts per prompt (no epsilon):")
    print(f"{'prompt':>6} {'rollout':>7} {'(r1, r2)':>9} {'total':>5} {'GRPO':>8} {'GDPO':>8} {'GDPO+batch(trl)':>16}")
    for i in range(4):
        r1, r2 = (int(v) for v in rewards[i])
        print(f"{'AB'[i // 2]:>6} {i % 2:>7} {f'({r1}, {r2})':>9} {r1 + r2:>5} "
              f"{grpo.advantages[i]:>+8.4f} {gdpo.advantages[i]:>+8.4f} {gdpo_batch.advantages[i]:>+16.4f}")
    print("Prompt A totals (0, 1) and prompt B totals (0, 2) get the same GRPO advantages (-0.7071, +0.7071);")
    print("GDPO normalizes each reward within the group first: A gets +-0.7071, B gets +-1.4142, so the")
    print("rollout that satisfied both rewards receives the stronger signal. The batch step (last column,")
    print("TRL preset) rescales all groups together and keeps that ratio.")
    return 0
