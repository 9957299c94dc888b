"""Size-bounded buckets over a stream of (name, tensor) pairs: the unit a refit transport moves.

A bucket closes as soon as it reaches `bucket_bytes`, so peak extra memory on either side
is about one bucket plus one tensor, whatever the model size. A tensor larger than the
bound travels alone.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

NamedTensor = tuple[str, torch.Tensor]


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def iter_buckets(named_tensors: Iterable[NamedTensor], bucket_bytes: int) -> Iterator[list[NamedTensor]]:
    """Group consecutive pairs into lists whose byte size reaches at most one tensor past `bucket_bytes`."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    bucket: list[NamedTensor] = []
    size = 0
    seen: set[str] = set()
    for name, tensor in named_tensors:
        if name in seen:
            # A repeated name would let the second copy silently overwrite the first in the engine.
            raise ValueError(f"weight {name!r} appears twice in the refit stream")
        seen.add(name)
        bucket.append((name, tensor))
        size += tensor_bytes(tensor)
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def flatten(buckets: Iterable[list[NamedTensor]]) -> Iterator[NamedTensor]:
    for bucket in buckets:
        yield from bucket
