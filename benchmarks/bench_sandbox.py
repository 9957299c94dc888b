"""Cost of one sandboxed run and of one code-reward rollout, against a bare interpreter start.

    python benchmarks/bench_sandbox.py [--runs 20] [--threads 4]

Baseline (same run): `python -I -S -c pass` as a plain subprocess. Measured: a sandboxed
`pass` (launcher, namespaces, read-only root, cgroup), one stdin-style test case, and one
function-style rollout (candidate and checker sandboxes, 4 asserts relayed), serially and
with threads (the reward runner's workers and `gdpo eval` overlap runs the same way).
Each measured rollout is checked to score 1 before its time is reported.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from gdpo_megatron.rewards import REWARDS
from gdpo_megatron.rewards.sandbox import SandboxLimits, run_sandboxed

ASSERTS = {"id": "add", "tests": {"style": "function", "asserts": [
    "assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4", "assert add(5, 5) == 10"]}}
STDIN = {"id": "sum", "tests": {"style": "stdin", "cases": [{"input": "1 2\n", "output": "3\n"}]}}
PROGRAM = "import sys\ndef add(a, b):\n    return a + b\nif __name__ == '__main__':\n" \
          "    print(add(*map(int, sys.stdin.read().split())))"


def bare() -> None:
    subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True)


def sandboxed() -> None:
    assert run_sandboxed("pass", limits=SandboxLimits()).ok


def rollout(record: dict):
    def run() -> None:
        # A fresh program text per call defeats the reward's cache of identical rollouts.
        program = PROGRAM + f"\n# {time.monotonic_ns()}"
        assert REWARDS.get("code_pass")(record, program, 0) == 1.0

    return run


def measure(fn, runs: int, threads: int) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    serial = (time.perf_counter() - start) / runs
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: fn(), range(runs)))
    return serial, runs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    cases = [("bare interpreter (baseline)", bare), ("sandboxed `pass`", sandboxed),
             ("stdin rollout (1 case)", rollout(STDIN)), ("function rollout (4 asserts)", rollout(ASSERTS))]
    print(f"{'what':32s} {'serial ms':>10s} {'x baseline':>10s} {'per s, ' + str(args.threads) + ' threads':>18s}")
    baseline = None
    for name, fn in cases:
        fn()  # warm-up
        serial, rate = measure(fn, args.runs, args.threads)
        baseline = baseline or serial
        print(f"{name:32s} {serial * 1e3:10.1f} {serial / baseline:10.2f} {rate:18.1f}")


if __name__ == "__main__":
    main()
