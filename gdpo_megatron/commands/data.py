"""`gdpo data`: list the datasets the recipes use and prepare them as project records.

    gdpo data list
    gdpo data prepare bfcl --out data/bfcl                       # offline: bfcl-eval's files
    gdpo data prepare deepscaler --out data/math                 # the HF hub (needs `datasets`)
    gdpo data prepare aime24 --out data/math --source ./aime_2024   # a local copy (json/jsonl/parquet)
    gdpo data prepare toolrl --out data/tool_calling --source toolace=DIR,hammer=DIR,xlam=DIR
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="list and prepare the recipes' datasets")
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the datasets `prepare` knows, where they come from, what they write")
    listing.set_defaults(func=_list)
    prepare = actions.add_parser("prepare", help="convert one dataset into records, splits and a manifest")
    prepare.add_argument("name", help="dataset name (see `gdpo data list`)")
    prepare.add_argument("--out", default=None, help="output directory (default: the one the shipped recipes read)")
    prepare.add_argument("--source", default=None,
                         help="'hf' (the Hugging Face hub, via `datasets`) or a local file/directory copy; "
                              "toolrl: toolace=PATH,hammer=PATH,xlam=PATH; bfcl: default the bfcl-eval package")
    prepare.add_argument("--val-fraction", type=float, default=None, help="held-out share for random splits")
    prepare.add_argument("--seed", type=int, default=0, help="seed of the split and of the mix's sampling")
    prepare.set_defaults(func=_prepare)


def _list(args: argparse.Namespace) -> int:
    from gdpo_megatron.data.prepare import DATASETS

    rows = [(spec.name, spec.task, f"{spec.default_out}/{{{','.join(spec.files)}}}", spec.upstream)
            for spec in (DATASETS.get(n) for n in DATASETS.names())]
    widths = [max(len(r[i]) for r in rows + [("name", "task", "writes", "source")]) for i in range(3)]
    print("  ".join(h.ljust(w) for h, w in zip(("name", "task", "writes"), widths)) + "  source")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from gdpo_megatron.data.prepare import DATASETS, prepare
    from gdpo_megatron.data.records import RecordError

    if args.name not in DATASETS:
        try:
            DATASETS.get(args.name)
        except KeyError as exc:
            print(f"gdpo data: {exc.args[0]}", file=sys.stderr)
            return 2
    out = args.out or DATASETS.get(args.name).default_out
    try:
        manifest_path = prepare(args.name, out, source=args.source, val_fraction=args.val_fraction, seed=args.seed)
    except (RecordError, OSError) as exc:
        print(f"gdpo data: {exc}", file=sys.stderr)
        return 2
    manifest = json.loads(manifest_path.read_text())
    for filename, info in manifest["files"].items():
        print(f"{out}/{filename}: {info['records']} records ({info['split']})")
    dropped = sum(d["count"] for d in manifest["dropped"].values())
    print(f"{manifest['rows_read']} rows read, {dropped} dropped"
          + "".join(f"\n  {d['count']:>5}  {reason}" for reason, d in manifest["dropped"].items()))
    print(f"manifest: {manifest_path}")
    return 0
