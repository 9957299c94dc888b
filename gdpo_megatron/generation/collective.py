"""The `collective` refit transport: one broadcast group of the exporting rank and every engine worker.

An engine's workers are not part of the trainer's torch.distributed world (each engine has
a world of its own), and `torch.distributed.new_group` cannot span two worlds. So the
refit group is a separate process group built directly from a TCPStore whose server runs
on the exporting policy rank (group rank 0): gloo on CPU hosts, NCCL on GPUs, the same code.
It is created once at start-up and reused by every refit.

Wire format of one refit, all broadcast from rank 0:
  per bucket: header int64[2] = (records bytes, buffer bytes), pickled records (uint8), packed buffer (uint8)
  end:        header (0, 0)
Every receiver allocates a fresh buffer per bucket, so views handed to the model loader
stay valid even if the loader keeps them until a layer is complete.

The collectives are called on the backend object itself with group ranks: the group is
not registered in any world, so `torch.distributed.broadcast(group=...)` (which maps
global ranks) cannot be used.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable, Iterator

import torch

from .buckets import NamedTensor, iter_buckets
from .transports import PackedBucket, TensorRecord, pack_bucket, unpack_bucket

DEFAULT_TIMEOUT = timedelta(minutes=10)
_STORE_PREFIX = "gdpo-refit"


def group_backend() -> str:
    """gloo where there is no GPU, NCCL where there is (the buffers then stay on the device)."""
    return "nccl" if torch.cuda.is_available() else "gloo"


@dataclass
class RefitGroup:
    """A process group outside every torch.distributed world; `rank` 0 is the sender."""

    backend_name: str
    rank: int
    world_size: int
    process_group: Any
    store: Any

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend_name == "nccl" else torch.device("cpu")

    def broadcast(self, tensor: torch.Tensor) -> None:
        options = torch.distributed.BroadcastOptions()
        options.rootRank = 0
        options.rootTensor = 0
        self.process_group.broadcast([tensor], options).wait()

    def close(self) -> None:
        shutdown = getattr(self.process_group, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except RuntimeError:
                pass  # already torn down by a failed peer


def join_refit_group(host: str, port: int, rank: int, world_size: int, backend: str,
                     timeout: timedelta = DEFAULT_TIMEOUT) -> RefitGroup:
    """Join (rank 0: host) the refit group; blocks until all `world_size` members have joined."""
    from torch.distributed import PrefixStore, TCPStore

    if not 0 <= rank < world_size:
        raise ValueError(f"refit group rank {rank} is outside a group of {world_size}")
    store = TCPStore(host, port, world_size, rank == 0, timeout=timeout, wait_for_workers=False)
    prefixed = PrefixStore(_STORE_PREFIX, store)
    if backend == "gloo":
        from torch.distributed.distributed_c10d import ProcessGroupGloo

        group = ProcessGroupGloo(prefixed, rank, world_size, timeout)
    elif backend == "nccl":
        from torch.distributed.distributed_c10d import ProcessGroupNCCL

        options = ProcessGroupNCCL.Options()
        options._timeout = timeout
        group = ProcessGroupNCCL(prefixed, rank, world_size, options)
    else:
        raise ValueError(f"refit group backend must be gloo or nccl, got {backend!r}")
    return RefitGroup(backend, rank, world_size, group, store)


# ---------------------------------------------------------------------------- sender (group rank 0)
def broadcast_weights(group: RefitGroup, named_tensors: Iterable[NamedTensor], bucket_bytes: int) -> dict[str, int]:
    """Send the whole stream in size-bounded buckets, then the end marker; returns what moved."""
    if group.rank != 0:
        raise RuntimeError("only refit group rank 0 sends weights")
    moved = {"buckets": 0, "tensors": 0, "bytes": 0}
    for bucket in iter_buckets(named_tensors, bucket_bytes):
        packed = pack_bucket(bucket, device=group.device)
        records = pickle.dumps(packed.records)
        group.broadcast(torch.tensor([len(records), packed.buffer.numel()], dtype=torch.int64, device=group.device))
        group.broadcast(torch.frombuffer(bytearray(records), dtype=torch.uint8).to(group.device))
        group.broadcast(packed.buffer)
        moved["buckets"] += 1
        moved["tensors"] += len(bucket)
        moved["bytes"] += packed.nbytes
    group.broadcast(torch.zeros(2, dtype=torch.int64, device=group.device))
    return moved


def drain(named_tensors: Iterable[NamedTensor]) -> None:
    """A policy rank that does not send still runs the export (its TP/PP gathers are collectives)."""
    for _ in named_tensors:
        pass


# ---------------------------------------------------------------------------- receivers (ranks 1..)
def receive_weights(group: RefitGroup) -> Iterator[NamedTensor]:
    """The stream `broadcast_weights` sends, bucket by bucket, as views into per-bucket buffers."""
    if group.rank == 0:
        raise RuntimeError("refit group rank 0 is the sender")
    while True:
        header = torch.zeros(2, dtype=torch.int64, device=group.device)
        group.broadcast(header)
        records_bytes, buffer_bytes = (int(v) for v in header.tolist())
        if records_bytes == 0:
            return
        raw = torch.empty(records_bytes, dtype=torch.uint8, device=group.device)
        group.broadcast(raw)
        records: list[TensorRecord] = pickle.loads(raw.cpu().numpy().tobytes())
        buffer = torch.empty(buffer_bytes, dtype=torch.uint8, device=group.device)
        group.broadcast(buffer)
        yield from unpack_bucket(PackedBucket(records=records, buffer=buffer, nbytes=buffer_bytes))
