"""The GDPO paper's "distinct advantage groups" analysis, vectorized over all multisets.

For K binary rewards and G rollouts, enumerate every multiset of G reward vectors from
{0,1}^K (the rollouts of one prompt have no order), normalize each multiset as one group
with the estimator, and count the distinct advantage tuples. Batch normalization is an
affine map shared by the whole batch, so it does not change the count and is left out;
so are the epsilons (an eps makes (0,1) and (0,2) differ in the 5th digit, which would
hide exactly the collapse being measured): a zero-std group gets advantage 0.

How advantage groups are compared (`compare`):
- "sorted" (default, the paper's counting, its Fig. 3): a multiset of G rollouts has no
  order, so it maps to the multiset of its G advantage values; two multisets are the same
  advantage group when their sorted advantage values are equal.
- "aligned": each multiset's rollouts are listed in a canonical order (ascending reward
  vector, read as a binary number) and the advantages are compared position by position,
  so equal values reached by different reward vectors count as different groups.
Values are compared after rounding to `decimals` digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

ANALYSIS_ESTIMATORS = ("grpo", "gdpo", "grpo-nostd")
COMPARE_MODES = ("sorted", "aligned")
MAX_MULTISETS = 5_000_000  # about 1 GB of temporaries at G = 4, K = 7; keeps a shared CPU box usable
CHUNK = 1 << 18


@dataclass(frozen=True)
class GroupCount:
    rewards: int
    rollouts: int
    estimator: str
    distinct_groups: int
    multisets: int
    compare: str = "sorted"

    def as_json(self) -> dict[str, object]:
        return {"rewards": self.rewards, "rollouts": self.rollouts, "estimator": self.estimator,
                "compare": self.compare, "distinct_groups": self.distinct_groups}


def multiset_count(num_rewards: int, rollouts: int) -> int:
    """C(2^K + G - 1, G): multisets of G items from 2^K reward vectors."""
    return math.comb(2 ** num_rewards + rollouts - 1, rollouts)


def enumerate_multisets(num_types: int, size: int) -> Tensor:
    """[C(T+G-1, G), G] int64: every non-decreasing sequence of `size` values in 0..T-1.

    Built position by position: each partial row is extended by every value >= its last.
    """
    rows = torch.arange(num_types, dtype=torch.int64).unsqueeze(1)
    for _ in range(size - 1):
        last = rows[:, -1]
        repeats = num_types - last
        parent = torch.repeat_interleave(torch.arange(rows.shape[0]), repeats)
        # offset of each child within its parent's block of children
        starts = torch.cumsum(repeats, 0) - repeats
        offset = torch.arange(parent.numel()) - starts[parent]
        rows = torch.cat([rows[parent], (last[parent] + offset).unsqueeze(1)], dim=1)
    return rows


def reward_vectors(types: Tensor, num_rewards: int) -> Tensor:
    """[..., K] float64 bits of each type index (reward k = bit K-1-k, so types sort lexicographically)."""
    shifts = torch.arange(num_rewards - 1, -1, -1, dtype=torch.int64)
    return ((types.unsqueeze(-1) >> shifts) & 1).to(torch.float64)


def _standardize(x: Tensor) -> Tensor:
    """(x - mean) / unbiased std over the LAST dim (the G rollouts); 0 for a constant group."""
    size = x.shape[-1]
    centered = x - x.mean(dim=-1, keepdim=True)
    constant = x.amin(dim=-1, keepdim=True) == x.amax(dim=-1, keepdim=True)
    std = (centered.pow(2).sum(dim=-1, keepdim=True) / max(size - 1, 1)).sqrt()
    return torch.where(constant, torch.zeros_like(centered), centered / torch.where(constant, torch.ones_like(std), std))


def group_advantages(rewards: Tensor, estimator: str) -> Tensor:
    """rewards [M, G, K] -> group-level advantages [M, G] of every group (no eps, no batch step)."""
    if estimator == "gdpo":
        # [M, K, G] so that the per-group reductions run over contiguous memory
        per_reward = _standardize(rewards.transpose(1, 2).contiguous())
        return per_reward.sum(dim=1)
    total = rewards.sum(dim=2)
    if estimator == "grpo":
        return _standardize(total)
    if estimator == "grpo-nostd":
        return total - total.mean(dim=1, keepdim=True)
    raise ValueError(f"unknown analysis estimator {estimator!r}; choose from {', '.join(ANALYSIS_ESTIMATORS)}")


def count_distinct_groups(num_rewards: int, rollouts: int, estimator: str, compare: str = "sorted",
                          decimals: int = 6) -> GroupCount:
    """Number of distinct advantage tuples over all multisets of `rollouts` binary reward vectors."""
    if num_rewards < 1 or rollouts < 1:
        raise ValueError(f"need rewards >= 1 and rollouts >= 1, got rewards={num_rewards}, rollouts={rollouts}")
    if compare not in COMPARE_MODES:
        raise ValueError(f"compare must be one of {', '.join(COMPARE_MODES)}, got {compare!r}")
    total = multiset_count(num_rewards, rollouts)
    if total > MAX_MULTISETS:
        raise ValueError(f"rewards={num_rewards}, rollouts={rollouts} has {total:,} multisets, more than the "
                         f"{MAX_MULTISETS:,} this analysis enumerates; use fewer rewards or rollouts")
    multisets = enumerate_multisets(2 ** num_rewards, rollouts)
    keys = []
    for start in range(0, multisets.shape[0], CHUNK):
        chunk = reward_vectors(multisets[start:start + CHUNK], num_rewards)
        advantages = group_advantages(chunk, estimator)
        quantized = torch.round(advantages * 10.0 ** decimals).to(torch.int64)
        if compare == "sorted":
            quantized = quantized.sort(dim=1).values
        keys.append(quantized)
    return GroupCount(num_rewards, rollouts, estimator, count_distinct_rows(torch.cat(keys)), total, compare)


def count_distinct_rows(rows: Tensor) -> int:
    """Number of distinct rows of an int64 [M, G] tensor.

    Folds the columns into one dense row id, one 1-D unique per column (ids stay below
    M * distinct values, so nothing overflows); torch.unique(dim=0) is ~20x slower here.
    """
    if rows.shape[0] == 0:
        return 0
    row_id = torch.zeros(rows.shape[0], dtype=torch.int64)
    for column in rows.unbind(dim=1):
        values, value_id = torch.unique(column, return_inverse=True)
        _, row_id = torch.unique(row_id * values.numel() + value_id, return_inverse=True)
    return int(row_id.max()) + 1
