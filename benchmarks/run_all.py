"""Run every benchmark in this folder, one after the other, in its own process.

`make bench` (or `python benchmarks/run_all.py [--only NAME]`). Each benchmark prints
its own table; figures are measured against a baseline taken in the same run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="substring of the benchmark file names to run")
    args, passthrough = parser.parse_known_args()
    here = Path(__file__).resolve().parent
    failures = 0
    for script in sorted(here.glob("bench_*.py")):
        if args.only and args.only not in script.name:
            continue
        print(f"\n=== {script.name}", flush=True)
        failures += subprocess.call([sys.executable, str(script), *passthrough]) != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
