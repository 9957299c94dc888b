"""Contiguous near-equal splits, used wherever rows are divided among workers or mini-batches."""

from __future__ import annotations


def even_ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) bounds of `parts` contiguous ranges covering range(total); sizes differ by at most
    one, the first ranges take the remainder, and ranges may be empty when parts > total."""
    if parts < 1:
        raise ValueError(f"cannot split {total} items into {parts} parts")
    base, extra = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds
