"""The `gdpo` command. Thin: each subcommand lives in `gdpo_megatron/commands/<name>.py`
and exposes `register(subparsers)`, which adds its parser and sets `func` to a handler
taking the parsed args and returning an exit code. New commands need no edit here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from gdpo_megatron import __version__, commands
from gdpo_megatron.config.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gdpo",
        description="Multi-reward RL (GDPO) for megatron-core policies with vLLM generation.",
    )
    parser.add_argument("--version", action="version", version=f"gdpo-megatron {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"gdpo: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
