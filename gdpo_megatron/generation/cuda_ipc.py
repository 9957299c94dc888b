"""The `cuda_ipc` refit transport: colocated engines read buckets straight from the policy's GPU memory.

Each engine worker shares its GPU with one policy rank (colocated placement). That rank packs
every bucket into one buffer on the GPU, publishes its CUDA IPC handle under a key of a
TCPStore (served by policy rank 0) and waits for the worker's acknowledgement before it
frees the buffer; the worker opens the handle, copies the views on the device, acknowledges,
and hands the copies to vLLM's in-place reload (which may keep a tensor until its whole
layer has arrived, so it must not hold views of a buffer the sender is about to free). So at most one
bucket per pair is in flight and no byte passes through host memory.

Keys: <channel>/<refit id>/<bucket index> -> pickled PackedBucket with an IPC handle, or b"end";
<channel>/<refit id>/<bucket index>/ack once the worker has copied that bucket.
GPU only: `cuda_ipc_export` refuses a CPU buffer.
"""

from __future__ import annotations

import pickle
from datetime import timedelta
from typing import Any, Iterable, Iterator

import torch

from .buckets import NamedTensor, iter_buckets
from .transports import cuda_ipc_export, cuda_ipc_open, pack_bucket

_END = b"end"


def current_gpu_uuid() -> str:
    """This process's GPU by identity, independent of CUDA_VISIBLE_DEVICES numbering ("" without
    CUDA): how a policy rank and the engine worker colocated with it find each other."""
    if not torch.cuda.is_available():
        return ""
    return str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)


def control_store(host: str, port: int, is_server: bool, timeout: timedelta = timedelta(minutes=10)):
    """The TCPStore that carries handles and acknowledgements (no process group is formed)."""
    from torch.distributed import TCPStore

    return TCPStore(host, port, None, is_server, timeout=timeout, wait_for_workers=False)


def _key(channel: str, refit_id: int, index: int) -> str:
    return f"{channel}/{refit_id}/{index}"


def send_over_ipc(store: Any, channel: str, refit_id: int, named_tensors: Iterable[NamedTensor],
                  bucket_bytes: int) -> dict[str, int]:
    """Policy side: one bucket at a time, each kept alive until the engine worker acknowledged it."""
    device = torch.device("cuda", torch.cuda.current_device())
    moved = {"buckets": 0, "tensors": 0, "bytes": 0}
    index = 0
    for index, bucket in enumerate(iter_buckets(named_tensors, bucket_bytes)):
        packed = pack_bucket(bucket, device=device)
        torch.cuda.current_stream().synchronize()  # the copies must have landed before the peer reads
        store.set(_key(channel, refit_id, index), pickle.dumps(cuda_ipc_export(packed)))
        store.wait([_key(channel, refit_id, index) + "/ack"])
        del packed
        moved["buckets"] += 1
        moved["tensors"] += len(bucket)
        moved["bytes"] += sum(t.numel() * t.element_size() for _, t in bucket)
    store.set(_key(channel, refit_id, moved["buckets"]), _END)
    return moved


def receive_over_ipc(store: Any, channel: str, refit_id: int) -> Iterator[tuple[list[NamedTensor], Any]]:
    """Engine side: (views of one bucket, acknowledge) pairs; call acknowledge once the views are copied."""
    device_index = torch.cuda.current_device()
    index = 0
    while True:
        key = _key(channel, refit_id, index)
        payload = store.get(key)  # blocks until the sender published it
        if payload == _END:
            return
        views = cuda_ipc_open(pickle.loads(payload), device_index)

        def acknowledge(key: str = key) -> None:
            torch.cuda.current_stream().synchronize()
            store.set(key + "/ack", b"1")

        yield views, acknowledge
        index += 1
