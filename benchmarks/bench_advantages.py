"""The advantage stage against the arithmetic of TRL, verl and NeMo-RL (same inputs, same run).

    python benchmarks/bench_advantages.py [--min-log2 10] [--max-log2 20] [--repeats 10]
                                          [--verl-max-log2 13] [--nemo-max-log2 12] [--missing 0.0] [--cold]

K = 3 binary rewards with weights (1, 0.5, 2), groups of G = 16 rollouts, one torch
thread. Each implementation is run `--repeats` times per N, interleaved with the others
(the machine may be shared: a burst of load then hits every implementation alike), and
the median is reported; the order is shuffled in every round (seeded). The loops of verl
and NeMo-RL are timed in rounds of their own: they flush the caches, and whatever runs
right after them starts cold (at 2^10 that alone costs the stage about 0.27 ms and TRL's
arithmetic about 0.03 ms), so sharing their rounds would make the comparison depend on
the order. `--cold` measures that case on purpose: before every timed call the NeMo-RL
reference runs on a 2^10 batch (untimed), as in a trainer, where the stage runs once per
step between other work.

The project is timed end to end (`compute_advantages` with its diagnostics) on two
layouts: groups contiguous (what the trainer produces) and scattered over the batch (ids
shuffled). The references are written here from the
projects' published formulas (docs/advantages.md has the table):

* TRL `normalize_then_sum`: float32 views [N/G, G, K], nanmean / nan-aware unbiased std,
  (r - mean) / (std + 1e-4), weighted nansum, then (x - mean) / (std + 1e-4) over the
  batch. Views need contiguous, equally large groups.
* verl `compute_gdpo_outcome_advantage`: per reward, a dict from group id to the list of
  its scores, mean/std per group (a lone rollout: mean 0, std 1), a Python loop over the
  rows, an unweighted sum, then masked whitening over the response tokens.
* NeMo-RL GDPO: per reward and per distinct prompt, a mask over the whole batch, group
  mean and unbiased std (the shipped recipes' mean baseline), division where std > 0,
  weighted sum, batch normalization without eps.

The loops of verl and NeMo-RL grow with N (NeMo-RL's with N x groups), so they stop at
`--verl-max-log2` / `--nemo-max-log2`. Before a time is reported, each reference's
advantages are checked against the project's matching preset on the same batch.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from typing import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from gdpo_megatron.algorithms.advantages import compute_advantages  # noqa: E402
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec  # noqa: E402

K = 3
G = 16
WEIGHTS = (1.0, 0.5, 2.0)


def make_batch(n: int, missing: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary rewards [n, K] (a `missing` share NaN), contiguous group ids, a permutation."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (n, K), generator=gen).float()
    if missing > 0:
        rewards[torch.rand(n, K, generator=gen) < missing] = float("nan")
    return rewards, torch.arange(n) // G, torch.randperm(n, generator=gen)


# ----------------------------------------------------------------------------- references

TRL_WEIGHTS = torch.tensor(WEIGHTS)


def trl_normalize_then_sum(rewards: torch.Tensor) -> torch.Tensor:
    grouped = rewards.view(-1, G, K)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    count = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    var = torch.nanmean((grouped - mean) ** 2, dim=1, keepdim=True) * count / (count - 1)
    normalized = ((grouped - mean) / (var.sqrt() + 1e-4)).view(-1, K)
    combined = (normalized * TRL_WEIGHTS).nansum(dim=1)
    return (combined - combined.mean()) / (combined.std() + 1e-4)


def verl_gdpo(rewards: torch.Tensor, index: list[int], response_mask: torch.Tensor) -> torch.Tensor:
    eps = 1e-6
    total = torch.zeros(rewards.shape[0])
    for k in range(K):
        scores = rewards[:, k].clone()
        id2score: dict[int, list[torch.Tensor]] = defaultdict(list)
        for i in range(scores.shape[0]):
            id2score[index[i]].append(scores[i])
        id2mean, id2std = {}, {}
        for idx, values in id2score.items():
            if len(values) == 1:
                id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
            else:
                stacked = torch.stack(values)
                id2mean[idx], id2std[idx] = torch.mean(stacked), torch.std(stacked)
        for i in range(scores.shape[0]):
            scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + eps)
        total += scores
    token = total.unsqueeze(-1) * response_mask
    mean = (token * response_mask).sum() / response_mask.sum()
    centered = token - mean
    var = (centered ** 2 * response_mask).sum() / response_mask.sum()
    var = var * response_mask.sum() / (response_mask.sum() - 1)  # unbiased, as verl's masked_whiten
    return (centered * torch.rsqrt(var + 1e-8) * response_mask)[:, 0]


def nemo_rl_gdpo(rewards: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(rewards.shape[0])
    for k in range(K):
        column = rewards[:, k]
        baseline = torch.zeros_like(column)
        std = torch.zeros_like(column)
        for prompt in torch.unique(prompt_ids):
            matching = prompt_ids == prompt
            values = column[matching]
            baseline[matching] = values.mean()
            std[matching] = values.std() if values.numel() > 1 else 0.0
        centered = column - baseline
        total += WEIGHTS[k] * torch.where(std > 0, centered / (std + 1e-6), centered)
    std = total.std()
    return (total - total.mean()) / std if std > 0 else total - total.mean()


# ----------------------------------------------------------------------------- harness

def config(preset: str, weights: tuple[float, ...] = WEIGHTS, **numerics: object) -> AlgorithmConfig:
    return AlgorithmConfig(preset=preset, rewards=[RewardSpec(name=f"r{k}", weight=w) for k, w in enumerate(weights)],
                           **numerics)


def load_average() -> str:
    """The machine's 1/5/15-minute load averages (a shared machine makes absolute times noisy)."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def median_times(fns: dict[str, Callable[[], object]], repeats: int,
                 flush: Callable[[], object] | None = None) -> dict[str, float]:
    """Median seconds per call, the order shuffled in every round; `flush` (untimed) runs
    before every timed call."""
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    order = random.Random(len(names) * 1000 + repeats)
    for _ in range(repeats):
        for name in order.sample(names, len(names)):
            if flush is not None:
                flush()
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def check(name: str, got: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    diff = float((got.float() - expected.float()).abs().max())
    if not diff <= atol:
        raise SystemExit(f"{name} disagrees with the project's matching preset: max |diff| = {diff:.3g}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-log2", type=int, default=10)
    parser.add_argument("--max-log2", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10, help="interleaved runs per size; the median is reported")
    parser.add_argument("--verl-max-log2", type=int, default=13)
    parser.add_argument("--nemo-max-log2", type=int, default=12)
    parser.add_argument("--missing", type=float, default=0.0, help="share of reward values that are NaN")
    parser.add_argument("--cold", action="store_true",
                        help="run the NeMo-RL reference on a 2^10 batch (untimed) before every timed call")
    args, _ = parser.parse_known_args()  # run_all.py passes its extra arguments to every benchmark
    torch.set_num_threads(1)
    # verl sums the normalized rewards unweighted
    trl, verl = config("trl"), config("verl", weights=(1.0,) * K)
    nemo = config("nemo_rl", group_baseline="mean", group_std="unbiased")
    print(f"advantage stage, K={K} binary rewards ({args.missing:.0%} missing), G={G}, torch threads=1, "
          f"median of {args.repeats} interleaved runs{', each after a cache flush' if args.cold else ''}; "
          f"project = compute_advantages incl. diagnostics")
    flush = None
    if args.cold:
        flush_rewards, flush_ids, _ = make_batch(2 ** 10, 0.0, seed=1)
        flush = lambda: nemo_rl_gdpo(flush_rewards, flush_ids)  # noqa: E731
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {load_average()}", flush=True)
    print(f"{'N':>8} {'ours_ms':>9} {'ours_scat_ms':>12} {'trl_ms':>9} {'trl/ours':>8} "
          f"{'verl_ms':>9} {'verl/ours':>9} {'nemo_ms':>9} {'nemo/ours':>9}", flush=True)
    for log2 in range(args.min_log2, args.max_log2 + 1):
        n = 2 ** log2
        rewards, group_ids, perm = make_batch(n, args.missing, seed=log2)
        scattered_rewards, scattered_ids = rewards[perm], group_ids[perm]
        mask = torch.ones(n, 1)
        fns: dict[str, Callable[[], object]] = {
            "ours": lambda: compute_advantages(rewards, group_ids, trl),
            "ours_scattered": lambda: compute_advantages(scattered_rewards, scattered_ids, trl),
            "trl": lambda: trl_normalize_then_sum(rewards),
        }
        loops: dict[str, Callable[[], object]] = {}
        ours = compute_advantages(rewards, group_ids, trl).advantages
        if args.missing == 0:  # TRL's nanstd differs from ours only where a group has < 2 values
            check("TRL reference", trl_normalize_then_sum(rewards), ours, 1e-4)
        check("scattered layout", compute_advantages(scattered_rewards, scattered_ids, trl).advantages, ours[perm], 1e-6)
        if log2 <= args.verl_max_log2 and args.missing == 0:
            index = group_ids.tolist()
            loops["verl"] = lambda: verl_gdpo(rewards, index, mask)
            verl_ours = compute_advantages(rewards, group_ids, verl, response_mask=mask).advantages
            check("verl reference", verl_gdpo(rewards, index, mask), verl_ours, 1e-4)
        if log2 <= args.nemo_max_log2 and args.missing == 0:
            loops["nemo"] = lambda: nemo_rl_gdpo(rewards, group_ids)
            check("NeMo-RL reference", nemo_rl_gdpo(rewards, group_ids), compute_advantages(rewards, group_ids, nemo).advantages, 1e-4)
        t = median_times(fns, args.repeats, flush)
        if loops:  # their own rounds: after their Python loops the next call would always start cold
            t.update(median_times(loops, args.repeats))
        ratio = lambda name: f"{t[name] / t['ours']:>8.2f}x" if name in t else f"{'-':>9}"  # noqa: E731
        cell = lambda name: f"{t[name] * 1e3:>9.3f}" if name in t else f"{'-':>9}"  # noqa: E731
        print(f"{n:>8} {cell('ours')} {t['ours_scattered'] * 1e3:>12.3f} {cell('trl')} {t['trl'] / t['ours']:>7.2f}x "
              f"{cell('verl')} {ratio('verl')} {cell('nemo')} {ratio('nemo')}", flush=True)
    print("ratios > 1: the reference is slower than the project; '-': not run at that N (see --help)")
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
