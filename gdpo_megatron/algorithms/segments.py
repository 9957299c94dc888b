"""Vectorized per-group statistics of NaN-aware reward columns (segment operations).

Groups are arbitrary integer ids: members need not be contiguous or equally many.
Everything here is O(N * K) scatter/index_add work; there is no Python loop over groups.
Missing values are NaN and are left out of every statistic.

Exactness matters more than elegance here: a group whose valid values are all equal
must produce exactly zero centered values and exactly zero spread (users read
"zero-variance group" diagnostics, and `where_positive` epsilon modes branch on std == 0),
so constant groups are detected with min == max rather than trusted to round-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GroupIndex:
    """Rows mapped to dense group numbers 0..num_groups-1 (in sorted order of the ids)."""

    inverse: Tensor  # [N] int64: dense group number of each row
    num_groups: int

    @property
    def sizes(self) -> Tensor:
        """[G] int64 number of rows per group."""
        return torch.bincount(self.inverse, minlength=self.num_groups)


def index_groups(group_ids: Tensor) -> GroupIndex:
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D [N], got shape {tuple(group_ids.shape)}")
    if group_ids.is_floating_point() or group_ids.is_complex() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    return GroupIndex(inverse=inverse.to(torch.int64), num_groups=int(unique.numel()))


def segment_sum(values: Tensor, groups: GroupIndex) -> Tensor:
    """[N, ...] -> [G, ...] sums per group (index_add_ on CPU adds in row order: deterministic)."""
    out = values.new_zeros((groups.num_groups, *values.shape[1:]))
    return out.index_add_(0, groups.inverse, values)


def _segment_extreme(values: Tensor, groups: GroupIndex, reduce: str, fill: float) -> Tensor:
    index = groups.inverse.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    out = values.new_full((groups.num_groups, *values.shape[1:]), fill)
    return out.scatter_reduce_(0, index, values, reduce=reduce, include_self=True)


@dataclass(frozen=True)
class ColumnStats:
    """Per-group statistics of the columns of x [N, K] (NaN = missing); all [G, K] unless noted."""

    valid: Tensor  # [N, K] bool
    count: Tensor  # float64 number of valid values
    mean: Tensor  # exact value in constant groups, 0 where count == 0
    centered: Tensor  # [N, K] x - group mean, exactly 0 in constant groups and where missing
    sq_dev: Tensor  # sum of centered**2
    dev_sum: Tensor  # sum of centered (round-off of the mean; kept for the leave-one-out algebra)
    minimum: Tensor  # +inf where count == 0
    maximum: Tensor  # -inf where count == 0
    is_min: Tensor  # [N, K] bool: valid and equal to its group's minimum
    is_max: Tensor  # [N, K] bool
    count_min: Tensor  # float64 how many valid values equal the minimum
    count_max: Tensor

    @property
    def constant(self) -> Tensor:
        """[G, K] groups whose valid values are all equal (including 0 or 1 valid values)."""
        return (self.count <= 1) | (self.minimum == self.maximum)


def column_stats(x: Tensor, groups: GroupIndex) -> ColumnStats:
    """NaN-aware per-group statistics of every column of x [N, K] (float64 expected)."""
    valid = ~torch.isnan(x)
    filled = torch.where(valid, x, torch.zeros_like(x))
    count = segment_sum(valid.to(x.dtype), groups)
    total = segment_sum(filled, groups)
    minimum = _segment_extreme(torch.where(valid, x, torch.full_like(x, float("inf"))), groups, "amin", float("inf"))
    maximum = _segment_extreme(torch.where(valid, x, torch.full_like(x, float("-inf"))), groups, "amax", float("-inf"))
    constant = (count <= 1) | (minimum == maximum)
    mean = total / count.clamp(min=1.0)
    mean = torch.where(constant & (count >= 1), minimum, mean)
    mean = torch.where(count >= 1, mean, torch.zeros_like(mean))
    centered = torch.where(valid, filled - mean[groups.inverse], torch.zeros_like(x))
    centered = torch.where(constant[groups.inverse], torch.zeros_like(x), centered)
    is_min = valid & (x == minimum[groups.inverse])
    is_max = valid & (x == maximum[groups.inverse])
    return ColumnStats(
        valid=valid, count=count, mean=mean, centered=centered,
        sq_dev=segment_sum(centered * centered, groups), dev_sum=segment_sum(centered, groups),
        minimum=minimum, maximum=maximum, is_min=is_min, is_max=is_max,
        count_min=segment_sum(is_min.to(x.dtype), groups), count_max=segment_sum(is_max.to(x.dtype), groups),
    )


def group_std(stats: ColumnStats, correction: int) -> Tensor:
    """[G, K] standard deviation with denominator count - correction; 0 where undefined or constant."""
    denom = stats.count - correction
    var = stats.sq_dev / denom.clamp(min=1.0)
    std = var.clamp(min=0.0).sqrt()
    return torch.where((denom > 0) & ~stats.constant, std, torch.zeros_like(std))


def leave_one_out_centered(stats: ColumnStats, groups: GroupIndex) -> Tensor:
    """[N, K] x_i minus the mean of the other valid values of its group: n/(n-1) * (x_i - mean).

    0 where the row is missing or has no valid peer.
    """
    n = stats.count[groups.inverse]
    scale = n / (n - 1.0).clamp(min=1.0)
    return torch.where(n >= 2, stats.centered * scale, torch.zeros_like(stats.centered))


def leave_one_out_std(stats: ColumnStats, groups: GroupIndex) -> Tensor:
    """[N, K] unbiased std of the OTHER valid values of each row's group (denominator n - 2).

    With centered values d (sum D, squares Q), the n-1 others of row i have mean offset
    e = (D - d_i)/(n-1) and squared deviation Q - d_i^2 - (n-1) e^2. Exactly 0 where the
    others are all equal (constant group, or row i is the only value differing from the
    rest), undefined (fewer than 2 others) or the row is missing.
    """
    inv = groups.inverse
    n = stats.count[inv]
    d = stats.centered
    others = n - 1.0
    e = (stats.dev_sum[inv] - d) / others.clamp(min=1.0)
    sq = stats.sq_dev[inv] - d * d - others * e * e
    std = (sq.clamp(min=0.0) / (n - 2.0).clamp(min=1.0)).sqrt()
    lone_min = stats.is_min & (stats.count_min[inv] == 1) & (stats.count_max[inv] == others)
    lone_max = stats.is_max & (stats.count_max[inv] == 1) & (stats.count_min[inv] == others)
    others_constant = stats.constant[inv] | lone_min | lone_max
    defined = stats.valid & (n >= 3) & ~others_constant
    return torch.where(defined, std, torch.zeros_like(std))
