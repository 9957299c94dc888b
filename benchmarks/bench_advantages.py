"""Vectorized GDPO advantages vs a straightforward per-group Python loop (same run, same data).

    python benchmarks/bench_advantages.py [--max-log2 20] [--loop-max-log2 17] [--repeats 3]

N = 2^14 .. 2^20 rollouts, K = 3 rewards (5% missing), G = 16 rollouts per prompt, TRL
preset (the default). The loop baseline stops at 2^17 by default (it grows linearly and
would dominate the run); `--loop-max-log2 20` measures it everywhere. Both
implementations are checked to agree before a time is reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from gdpo_megatron.algorithms.advantages import compute_advantages  # noqa: E402
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec  # noqa: E402

K = 3
G = 16
WEIGHTS = (1.0, 0.5, 2.0)
EPS = 1e-4  # TRL preset: group and batch epsilon


def make_batch(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (n, K), generator=gen).float()
    rewards[:, 2] = torch.rand(n, generator=gen)
    rewards[torch.rand(n, K, generator=gen) < 0.05] = float("nan")
    group_ids = torch.randperm(n, generator=gen) // G  # groups scattered over the batch
    return rewards, group_ids


def loop_gdpo(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """The plain reading of the TRL formulas, one group at a time."""
    x = rewards.double()
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    order = torch.argsort(group_ids, stable=True)
    _, counts = torch.unique_consecutive(group_ids[order], return_counts=True)
    scores = torch.zeros(x.shape[0], dtype=torch.float64)
    for rows in torch.split(order, counts.tolist()):
        block = x[rows]
        normalized = torch.zeros_like(block)
        for k in range(K):
            column = block[:, k]
            valid = ~torch.isnan(column)
            values = column[valid]
            if values.numel() < 2 or bool(values.min() == values.max()):
                continue
            normalized[valid, k] = (values - values.mean()) / (values.std() + EPS)
        scores[rows] = normalized @ weights
    has_reward = ~torch.isnan(x).all(dim=1)
    kept = scores[has_reward]
    out = torch.zeros_like(scores)
    out[has_reward] = (kept - kept.mean()) / (kept.std() + EPS)
    return out.float()


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-log2", type=int, default=14)
    parser.add_argument("--max-log2", type=int, default=20)
    parser.add_argument("--loop-max-log2", type=int, default=17, help="largest N for the loop baseline")
    parser.add_argument("--repeats", type=int, default=3, help="vectorized runs per size (best is reported)")
    args, _ = parser.parse_known_args()  # run_all.py passes its extra arguments to every benchmark
    torch.set_num_threads(1)
    config = AlgorithmConfig(rewards=[RewardSpec(name=f"r{k}", weight=w) for k, w in enumerate(WEIGHTS)])
    print(f"GDPO advantages, TRL preset, K={K}, G={G}, 5% missing, torch threads=1")
    print(f"{'N':>9} {'vectorized_s':>12} {'loop_s':>9} {'speedup':>8} {'rollouts/s':>12} {'max_abs_diff':>12}")
    for log2 in range(args.min_log2, args.max_log2 + 1):
        n = 2 ** log2
        rewards, group_ids = make_batch(n, seed=log2)
        vec_s, result = best_time(lambda: compute_advantages(rewards, group_ids, config), args.repeats)
        if log2 <= args.loop_max_log2:
            loop_s, expected = best_time(lambda: loop_gdpo(rewards, group_ids), 1)
            diff = float((result.advantages - expected).abs().max())
            if diff > 1e-5:
                print(f"MISMATCH at N={n}: max |vectorized - loop| = {diff:.3g}", file=sys.stderr)
                return 1
            print(f"{n:>9} {vec_s:>12.4f} {loop_s:>9.3f} {loop_s / vec_s:>7.1f}x {n / vec_s:>12.3g} {diff:>12.2g}",
                  flush=True)
        else:
            print(f"{n:>9} {vec_s:>12.4f} {'-':>9} {'-':>8} {n / vec_s:>12.3g} {'-':>12}", flush=True)
    print(f"(loop baseline measured up to N=2^{args.loop_max_log2}; it is linear in the number of groups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
