"""Per-group statistics of NaN-aware reward columns, computed once per batch.

Groups are arbitrary integer ids: members need not be contiguous or equally many.
Missing values are NaN and are left out of every statistic. Nothing loops over groups.

How the work is laid out (`GroupIndex`): the rewards are copied once into float64 columns,
one contiguous row per reward, so every per-group reduction runs over the innermost
dimension (several times faster than reducing across the middle of [N, K]).

* the common layout, groups of S consecutive rows in increasing id order, becomes a
  [K, G, S] table: no sort, no gather, no scatter;
* any other layout is first put in that order by a stable sort of the ids (rows of a
  group keep their relative order). If the groups are then equally large, the very same
  [K, G, S] code runs, so the result is bit for bit the one of the contiguous batch
  holding the rows in that order. Unequal groups are gathered into padded
  [K, G_b, S_b] blocks (pads are missing values; exact sizes when there are few
  distinct ones, powers of two otherwise, so padding at most doubles the work);
  per-row values reach their groups' statistics by one gather. Given equal groups, the
  padded code computes the same bits as the table.

The statistics are computed in NumPy and handed out as tensors that share their memory
(`GroupStats.arrays` and the tensor properties). Below ~2^13 rollouts the stage is bound
by the fixed cost of each call, and a NumPy call on a small array costs a third to a half
of a torch call; every row sum goes through one einsum reduction, as fast as torch's at
any size, and element-wise operations are the same IEEE operations either way. The
quantities only some estimators need (group sums, extremes, leave-one-out pieces) are
computed with torch on first use.

Exactness matters more than elegance here: a group whose valid values are all equal
produces exactly zero centered values and exactly zero spread (users read "zero-variance
group" diagnostics, and `where_positive` epsilon modes branch on std == 0). The mean of
a group is its first valid value plus the mean offset of the values from it, so the mean
of such a group is that value exactly (the offsets are exact zeros), every centered value
is an exact 0 without a separate mask, and no minimum or maximum is needed (they, and the
group sums, are computed only when asked for).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple, Optional

import numpy as np
import torch
from torch import Tensor

_EXACT_SIZE_BLOCKS = 8  # up to this many distinct group sizes, each size gets its own block
_NUMPY_FLOATS = (torch.float32, torch.float64)


@dataclass(frozen=True)
class _Block:
    """Groups padded to one width: rows[g, s] is a layout row, or N (a missing-value pad)."""

    groups: Tensor  # [G_b] dense group numbers
    rows: Tensor  # [G_b, S_b] int64


@dataclass(eq=False)
class GroupIndex:
    """How the N rows of a batch map to groups numbered 0..num_groups-1 (sorted order of the ids).

    Work happens in the *layout*: the rows reordered so that each group's rows are
    consecutive (`order` is that permutation, None when the batch already is). `size` is
    the common group size when all groups are equally large, else None.
    """

    num_groups: int
    num_rows: int
    sizes: Tensor  # [G] int64 rows per group
    order: Optional[Tensor] = None  # [N] layout row j is batch row order[j]; None = identity
    size: Optional[int] = None

    # -- moving between the batch order and the layout

    def to_layout(self, x: Tensor) -> Tensor:
        """Batch-order rows [N, ...] -> layout order."""
        return x if self.order is None else x.index_select(0, self.order)

    def from_layout(self, y: Tensor) -> Tensor:
        """Layout-order rows [N, ...] -> batch order."""
        if self.order is None:
            return y
        return torch.empty_like(y).index_copy_(0, self.order, y)

    @cached_property
    def inverse(self) -> Tensor:
        """[N] int64 dense group number of each batch row."""
        return self.from_layout(self.layout_inverse)

    @cached_property
    def layout_inverse(self) -> Tensor:
        """[N] int64 dense group number of each layout row (non-decreasing)."""
        return torch.repeat_interleave(torch.arange(self.num_groups), self.sizes)

    # -- the column layout the statistics work in: one contiguous row per reward, so that
    # every per-group reduction runs over the innermost dimension

    def columns(self, x: Tensor) -> Tensor:
        """Batch-order x [N, K] -> float64 columns in layout order ([K, G, S] when uniform, else [K, N]).

        One copy does the transpose and the conversion (mixed float32/float64 arithmetic
        later would convert again inside every operation)."""
        return torch.from_numpy(self.column_table(x))

    def column_table(self, x: Tensor) -> np.ndarray:
        """`columns` as a NumPy array (C-contiguous)."""
        if self.order is None and x.is_cpu and not x.requires_grad and x.dtype in _NUMPY_FLOATS:
            table = x.numpy().T.astype(np.float64, order="C")
        else:
            cols = x.detach().cpu().t()
            if self.order is not None:
                cols = cols.index_select(1, self.order)
            table = cols.to(torch.float64, memory_format=torch.contiguous_format).numpy()
        return table.reshape(table.shape[0], self.num_groups, self.size) if self.size is not None else table

    def flat(self, y: Tensor) -> Tensor:
        """`columns`-shaped -> [K, N] (layout order)."""
        return y.reshape(y.shape[0], self.num_rows)

    def shaped(self, y: Tensor) -> Tensor:
        """[K, N] layout-order columns -> `columns` shape."""
        return y.view(y.shape[0], self.num_groups, self.size) if self.size is not None else y

    def per_row(self, stat: Tensor) -> Tensor:
        """[K, G] per-group values, broadcastable against `columns`-shaped values."""
        return stat.unsqueeze(-1) if self.size is not None else stat[:, self.layout_inverse]

    @cached_property
    def _blocks(self) -> list[_Block]:
        starts = torch.cumsum(self.sizes, 0) - self.sizes
        distinct = torch.unique(self.sizes)
        if distinct.numel() <= _EXACT_SIZE_BLOCKS:
            widths = distinct
            width_of = self.sizes
        else:  # padded to the next power of two: at most twice the rows
            width_of = torch.pow(2, torch.ceil(torch.log2(self.sizes.clamp(min=1).double()))).to(torch.int64)
            widths = torch.unique(width_of)
        blocks = []
        for width in widths.tolist():
            members = torch.nonzero(width_of == width).flatten()
            offsets = torch.arange(width)
            rows = starts[members].unsqueeze(1) + offsets
            rows = torch.where(offsets < self.sizes[members].unsqueeze(1), rows, torch.full_like(rows, self.num_rows))
            blocks.append(_Block(groups=members, rows=rows))
        return blocks

    def reduce(self, values: Tensor, how: str) -> Tensor:
        """Per-group sum / amin / amax of `columns`-shaped values -> [K, G]; missing values must
        already be the operation's identity (0, +inf, -inf). Sums are float64."""
        if self.size is not None:
            return _reduce_rows(values, how)
        fill = {"sum": 0, "amin": float("inf"), "amax": float("-inf")}[how]
        padded = torch.cat([values, values.new_full((values.shape[0], 1), fill)], dim=1)
        out = None
        for block in self._blocks:
            part = _reduce_rows(padded[:, block.rows], how)
            if out is None:
                out = part.new_empty((values.shape[0], self.num_groups))
            out[:, block.groups] = part
        return out

    def count_distinct(self, values: np.ndarray, scale: float = 1.0) -> int:
        """Sum over groups of the number of distinct values among the group's rows (layout-order
        [N] float array; NumPy sorts short rows several times faster than torch). Values count
        as equal when rint(value * scale) is: that is monotone, so the rows are rounded after
        the sort."""
        if self.size is not None:
            ordered = np.multiply(values.reshape(self.num_groups, self.size), scale)
            ordered.sort(axis=1)
            np.rint(ordered, out=ordered)
            return self.num_groups + int(np.count_nonzero(ordered[:, 1:] != ordered[:, :-1]))
        padded = np.append(values * scale, np.inf)  # sorts after every real value; not counted
        total = 0
        for block in self._blocks:
            ordered = padded[block.rows.numpy()]
            ordered.sort(axis=1)
            real = ordered != np.inf
            np.rint(ordered, out=ordered)
            changes = (ordered[:, 1:] != ordered[:, :-1]) & real[:, 1:]
            total += int(np.count_nonzero(real[:, 0])) + int(np.count_nonzero(changes))
        return total


def _reduce_rows(table: Tensor, how: str) -> Tensor:
    """[K, G, S] -> [K, G] over the rows of each group (a sum always accumulates in float64)."""
    if how == "sum":
        return table.sum(-1, dtype=torch.float64)
    return table.amin(-1) if how == "amin" else table.amax(-1)


def index_groups(group_ids: Tensor) -> GroupIndex:
    """Group ids [N] (any integers, any order) -> GroupIndex; contiguous equal groups cost O(N) and no sort.

    The batch is already in layout order when its runs of equal ids come in increasing id
    order: each group is then one run."""
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D [N], got shape {tuple(group_ids.shape)}")
    if group_ids.is_floating_point() or group_ids.is_complex() or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    n = int(group_ids.numel())
    if n == 0:
        return GroupIndex(num_groups=0, num_rows=0, sizes=torch.zeros(0, dtype=torch.int64), size=1)
    ids = (group_ids if group_ids.is_cpu and not group_ids.requires_grad else group_ids.detach().cpu()).numpy()
    changes = ids[1:] != ids[:-1]
    num = int(np.count_nonzero(changes)) + 1
    size = n // num
    # num runs, num - 1 of them ending one row before a multiple of n / num: equally long runs
    if size * num == n and _all(changes[size - 1::size]):
        heads = ids[::size]
        if _all(heads[1:] > heads[:-1]):  # one run per group, in id order: the layout already
            return GroupIndex(num_groups=num, num_rows=n, sizes=_equal_sizes(num, size), size=size)
        ends = None
    else:
        ends = np.flatnonzero(changes)
    order = None
    if ends is None or not bool((ids[ends] < ids[ends + 1]).all()):
        # some group is split or out of order: sort (stable keeps the rows' relative order)
        order = torch.argsort(group_ids, stable=True)
        ends = _run_ends(ids[order.numpy()])
    num = ends.size + 1
    size = n // num
    if size * num == n and not ((ends + 1) % size).any():
        return GroupIndex(num_groups=num, num_rows=n, sizes=_equal_sizes(num, size), order=order, size=size)
    bounds = np.empty(num + 1, dtype=np.int64)
    bounds[0], bounds[1:-1], bounds[-1] = -1, ends, n - 1
    return GroupIndex(num_groups=num, num_rows=n, sizes=torch.from_numpy(np.diff(bounds)), order=order)


_all = np.logical_and.reduce  # ndarray.all() without its Python wrapper (the layout check is on the hot path)


def _equal_sizes(num: int, size: int) -> Tensor:
    sizes = np.empty(num, dtype=np.int64)
    sizes.fill(size)
    return torch.from_numpy(sizes)


def _run_ends(ids: np.ndarray) -> np.ndarray:
    """Positions i where ids[i] != ids[i + 1]: the last row of every run of equal ids but the final one."""
    return np.flatnonzero(ids[1:] != ids[:-1])


class GroupArrays(NamedTuple):
    """The statistics as NumPy arrays, the tensors of `GroupStats` are views of them."""

    values: np.ndarray  # columns-shaped
    count: Optional[np.ndarray]  # [K, G]; None when every group holds all its `common_count` values
    mean: np.ndarray  # [K, G]
    sq_dev: np.ndarray  # [K, G]
    centered: np.ndarray  # columns-shaped


@dataclass(eq=False)
class GroupStats:
    """Per-group statistics of the columns of x [N, K] (NaN = missing), computed in one pass.

    Per-group tensors are [K, G] float64: one row per reward, groups in group-number order
    (sorted ids). Per-row tensors are `groups.columns`-shaped, in layout order ([K, G, S]
    for equal groups, else [K, N]; `groups.flat` gives [K, N], `groups.from_layout` on
    its transpose gives batch order). Constant groups (all valid values equal, or at most
    one valid value) have mean == their value and exactly zero centered values and sq_dev.
    The statistics live in `arrays`; each tensor is a view made on first use. Nothing here
    is modified after construction.
    """

    groups: GroupIndex
    arrays: GroupArrays
    sq_totals: list[float]  # per reward: sq_dev summed over the groups
    any_missing: bool  # some value is NaN
    all_finite: bool = False  # True: no value is NaN or infinite (False: some may be)
    common_count: Optional[int] = None  # the count of every group when they are all equal and full

    @cached_property
    def values(self) -> Tensor:
        """Columns-shaped float64, NaN = missing."""
        return torch.from_numpy(self.arrays.values)

    @cached_property
    def count(self) -> Tensor:
        """[K, G] number of valid values."""
        if self.arrays.count is None:
            return torch.full(tuple(self.arrays.mean.shape), float(self.common_count), dtype=torch.float64)
        return torch.from_numpy(self.arrays.count)

    @cached_property
    def mean(self) -> Tensor:
        """[K, G] mean of the valid values, 0 where count == 0."""
        return torch.from_numpy(self.arrays.mean)

    @cached_property
    def sq_dev(self) -> Tensor:
        """[K, G] sum of squared deviations from the group mean (0 in constant groups)."""
        return torch.from_numpy(self.arrays.sq_dev)

    @cached_property
    def centered(self) -> Tensor:
        """Columns-shaped float64: value - group mean, exactly 0 in constant groups and where missing."""
        return torch.from_numpy(self.arrays.centered)

    @cached_property
    def valid(self) -> Tensor:
        """Columns-shaped bool: the value is present."""
        return self.values == self.values

    @cached_property
    def total(self) -> Tensor:
        """[K, G] sum of the valid values."""
        return self.groups.reduce(torch.where(self.valid, self.values, 0.0), "sum")

    @cached_property
    def minimum(self) -> Tensor:
        """[K, G] smallest valid value (+inf where count == 0)."""
        return self.groups.reduce(torch.where(self.valid, self.values, float("inf")), "amin")

    @cached_property
    def maximum(self) -> Tensor:
        """[K, G] largest valid value (-inf where count == 0)."""
        return self.groups.reduce(torch.where(self.valid, self.values, float("-inf")), "amax")

    @property
    def constant(self) -> Tensor:
        """[K, G] groups whose valid values are all equal (including 0 or 1 valid values)."""
        return (self.count <= 1) | (self.minimum == self.maximum)

    def std_array(self, correction: int) -> np.ndarray:
        """[K, G] standard deviation with denominator count - correction (a fresh array); exactly 0
        where constant or undefined (count <= correction: sq_dev is 0 there)."""
        if self.common_count is not None:  # one divisor for all: a scalar (the same quotients)
            variance = self.arrays.sq_dev / float(max(self.common_count - correction, 1))
        else:
            variance = self.arrays.sq_dev / np.maximum(self.arrays.count - correction, 1.0)
        return np.sqrt(variance, out=variance)

    def std(self, correction: int) -> Tensor:
        """`std_array` as a tensor."""
        return torch.from_numpy(self.std_array(correction))

    # -- leave-one-out pieces (only leave-one-out numerics need them)

    @cached_property
    def dev_sum(self) -> Tensor:
        """[K, G] sum of centered values (the round-off of the mean, for the leave-one-out algebra)."""
        return self.groups.reduce(self.centered, "sum")

    @cached_property
    def is_min(self) -> Tensor:
        return self.valid & (self.values == self.groups.per_row(self.minimum))

    @cached_property
    def is_max(self) -> Tensor:
        return self.valid & (self.values == self.groups.per_row(self.maximum))

    @cached_property
    def count_min(self) -> Tensor:
        return self.groups.reduce(self.is_min, "sum")

    @cached_property
    def count_max(self) -> Tensor:
        return self.groups.reduce(self.is_max, "sum")


def group_stats(x: Tensor, groups: GroupIndex) -> GroupStats:
    """NaN-aware per-group statistics of the columns of x [N, K] (any float dtype, batch order)."""
    return _table_stats(groups.column_table(x), groups)


def column_stats(values: Tensor, groups: GroupIndex) -> GroupStats:
    """`group_stats` of float64 values already in the column layout (`groups.columns`)."""
    return _table_stats(np.ascontiguousarray(values.detach().cpu().numpy(), dtype=np.float64), groups, values)


def _table_stats(table: np.ndarray, groups: GroupIndex, values: Optional[Tensor] = None) -> GroupStats:
    """The statistics of a column table (`GroupIndex.column_table`); `values` is its tensor when known.

    Equal groups first take the offsets from each group's first value without any mask (a
    group holding a NaN comes out NaN), then redo only the (reward, group) pairs whose sum
    is not finite with the NaN-aware moments: batches without missing rewards pay for no
    masking at all (a finite sum of the offsets proves that no value is NaN or infinite).
    Sums accumulate in float64, all of them through the same row reduction
    (`_row_sums`), so that every layout reaches the same bits. One [K, N] scratch buffer
    serves the offsets and then the centered values (large batches are bound by
    first-touch page faults of fresh buffers, not by arithmetic).
    """
    if groups.size is None:
        with np.errstate(invalid="ignore"):
            return _padded_stats(values, table, groups)
    size = groups.size
    with np.errstate(invalid="ignore"):  # infinite rewards (rejected by the caller) make inf - inf here
        scratch = np.subtract(table, table[:, :, :1])
        offsets = _row_sums(scratch)
        all_finite = math.isfinite(np.add.reduce(offsets, axis=None))  # NaN and infinities reach the sum
        # mean = first value + mean offset: a constant group's offsets are exact zeros
        mean = np.add(table[:, :, 0], offsets / size)
        count = None
        any_missing = False
        if not all_finite:
            count = np.full(mean.shape, float(size))
            pairs = np.flatnonzero(~np.isfinite(offsets))
            rows = table.reshape(-1, size)
            if 4 * pairs.size > mean.size:  # most pairs: one masked pass beats gather + scatter
                count, mean = (part.reshape(mean.shape) for part in _masked_moments(rows))
            else:
                count.reshape(-1)[pairs], mean.reshape(-1)[pairs] = _masked_moments(rows[pairs])
            any_missing = bool((count < size).any())
            if not any_missing:
                count = None
        centered = np.subtract(table, mean[:, :, None], out=scratch)
        if any_missing:
            np.copyto(centered, 0.0, where=np.isnan(centered))
        sq_dev = _row_sums(centered, centered)
        sq_totals = np.add.reduce(sq_dev, axis=-1).tolist()
    return _stats(groups, values, table, count, mean, sq_dev, centered, sq_totals, any_missing, all_finite,
                  None if any_missing else size)


def _row_sums(rows: np.ndarray, other: Optional[np.ndarray] = None) -> np.ndarray:
    """Sums over the last dimension (of rows * other when given): the one reduction of the
    statistics. On C-contiguous rows each row's sum depends only on its values, whatever
    the leading shape."""
    return np.einsum("...s->...", rows) if other is None else np.einsum("...s,...s->...", rows, other)


def _masked_moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Count and mean of the valid values over the last dimension (float64; NaN = missing,
    mean 0 without any): the first valid value plus the mean offset from it, the
    arithmetic of the unmasked path where every value is valid."""
    valid = rows == rows
    count = np.einsum("...s->...", valid.view(np.uint8), dtype=np.float64)
    shift = np.take_along_axis(rows, valid.argmax(-1)[..., None], -1)  # a NaN where nothing is valid
    offsets = np.subtract(rows, shift)
    np.copyto(offsets, 0.0, where=~valid)
    offsets = _row_sums(offsets)
    mean = np.where(count > 0, shift[..., 0] + offsets / np.maximum(count, 1.0), 0.0)
    return count, mean


def _padded_stats(values: Optional[Tensor], table: np.ndarray, groups: GroupIndex) -> GroupStats:
    """`column_stats` of unequal groups: NaN-aware moments over padded blocks (pads are NaN,
    then 0 in the centered values). Given equal groups (one block) it computes what
    `column_stats` does, bit for bit."""
    k = table.shape[0]
    count, mean, sq_dev = (np.empty((k, groups.num_groups)) for _ in range(3))
    padded = np.concatenate([table, np.full((k, 1), np.nan)], axis=1)
    for block in groups._blocks:
        members = block.groups.numpy()
        count[:, members], mean[:, members] = _masked_moments(_gather(padded, block))
    valid = table == table
    centered = np.where(valid, table - mean[:, groups.layout_inverse.numpy()], 0.0)
    padded = np.concatenate([centered, np.zeros((k, 1))], axis=1)
    for block in groups._blocks:
        rows = _gather(padded, block)
        sq_dev[:, block.groups.numpy()] = _row_sums(rows, rows)
    stats = _stats(groups, values, table, count, mean, sq_dev, centered, sq_dev.sum(-1).tolist(),
                   not bool(valid.all()), False, None)
    stats.valid = torch.from_numpy(valid)  # known: cache it
    return stats


def _gather(padded: np.ndarray, block: _Block) -> np.ndarray:
    """[K, N + 1] -> the block's [K, G_b, S_b] rows, C-contiguous like the table of equal groups
    (a reduction's inner loop, and so its rounding, depends on the memory layout)."""
    return np.ascontiguousarray(padded[:, block.rows.numpy()])


def _stats(groups: GroupIndex, values: Optional[Tensor], table: np.ndarray, count: np.ndarray, mean: np.ndarray,
           sq_dev: np.ndarray, centered: np.ndarray, sq_totals: list[float], any_missing: bool, all_finite: bool,
           common_count: Optional[int]) -> GroupStats:
    stats = GroupStats(groups=groups, arrays=GroupArrays(table, count, mean, sq_dev, centered), sq_totals=sq_totals,
                       any_missing=any_missing, all_finite=all_finite, common_count=common_count)
    if values is not None:  # the caller's tensor of the table
        stats.values = values
    return stats


def leave_one_out_centered(stats: GroupStats) -> Tensor:
    """x_i minus the mean of the other valid values of its group: n/(n-1) * (x_i - mean).

    0 where the row is missing or has no valid peer. Rows-shaped, like `stats.centered`.
    """
    n = stats.groups.per_row(stats.count)
    scale = n / (n - 1.0).clamp(min=1.0)
    return torch.where(n >= 2, stats.centered * scale, torch.zeros_like(stats.centered))


def leave_one_out_std(stats: GroupStats) -> Tensor:
    """Unbiased std of the OTHER valid values of each row's group (denominator n - 2).

    With centered values d (sum D, squares Q), the n-1 others of row i have mean offset
    e = (D - d_i)/(n-1) and squared deviation Q - d_i^2 - (n-1) e^2. Exactly 0 where the
    others are all equal (constant group, or row i is the only value differing from the
    rest), undefined (fewer than 2 others) or the row is missing.
    """
    per_row = stats.groups.per_row
    n = per_row(stats.count)
    d = stats.centered
    others = n - 1.0
    e = (per_row(stats.dev_sum) - d) / others.clamp(min=1.0)
    sq = per_row(stats.sq_dev) - d * d - others * e * e
    std = (sq.clamp(min=0.0) / (n - 2.0).clamp(min=1.0)).sqrt()
    count_min, count_max = per_row(stats.count_min), per_row(stats.count_max)
    lone_min = stats.is_min & (count_min == 1) & (count_max == others)
    lone_max = stats.is_max & (count_max == 1) & (count_min == others)
    others_constant = per_row(stats.constant) | lone_min | lone_max
    defined = stats.valid & (n >= 3) & ~others_constant
    return torch.where(defined, std, torch.zeros_like(std))
