"""`gdpo plot RUN_DIR [RUN_DIR ...] --out FILE.png`: reward curves of runs side by side,
plus a table of final rewards (mean over the last N steps)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plot", help="plot reward components, combined reward and response length of one or more runs")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (each with metrics.jsonl)")
    parser.add_argument("--out", required=True, help="output image (PNG)")
    parser.add_argument("--last", type=int, default=10, metavar="N",
                        help="final-reward table: mean over each run's last N steps (default 10)")
    parser.add_argument("--smooth", type=int, default=1, metavar="K",
                        help="trailing moving average over K steps (default 1: raw)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--table-out", default=None, metavar="FILE.md", help="also write the table here")
    parser.set_defaults(func=_plot)


def _plot(args: argparse.Namespace) -> int:
    from gdpo_megatron.metrics.jsonl import MetricsFileError
    from gdpo_megatron.plotting import final_rewards, format_table, load_run, plot_runs

    if args.last < 1 or args.smooth < 1:
        print("gdpo plot: error: --last and --smooth must be >= 1", file=sys.stderr)
        return 2
    try:
        runs = [load_run(path) for path in args.run_dirs]
    except MetricsFileError as exc:
        print(f"gdpo plot: error: {exc}", file=sys.stderr)
        return 2
    plot_runs(runs, args.out, smooth=args.smooth, title=args.title)
    table = format_table(*final_rewards(runs, args.last))
    print(f"wrote {args.out}\n\nfinal rewards (mean over the last {args.last} steps):\n{table}")
    if args.table_out:
        Path(args.table_out).write_text(table + "\n", encoding="utf-8")
    return 0
