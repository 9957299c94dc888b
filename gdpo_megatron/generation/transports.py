"""How a bucket of (name, tensor) pairs travels from the policy to an engine.

Every transport moves a bucket as ONE packed byte buffer plus a small list of
(name, dtype, shape, offset) records: one shared-memory segment, IPC handle or NCCL
broadcast per bucket instead of one per tensor.

- in-process (CPU, engine in the policy's process): no transport, the pairs are loaded directly.
- shared memory (CPU, engine in another process): the buffer lives in /dev/shm; the engine maps it.
- CUDA IPC (GPU, colocated engine on the same device): the buffer stays on the GPU; the engine
  opens it through a CUDA IPC handle (no copy through the host).
- NCCL broadcast (GPU, separate engines): the exporting rank and every engine rank form one NCCL
  group; the records go over the control channel, the buffer by broadcast from rank 0.
The GPU transports cannot run on this project's CPU CI; they are written against torch's
public primitives (torch.multiprocessing.reductions, torch.distributed) and documented in
docs/generation.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .buckets import NamedTensor, tensor_bytes

_ALIGN = 64  # keep every tensor's offset aligned so views are valid for every dtype


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass
class PackedBucket:
    """A bucket flattened into one uint8 buffer; `handle` replaces `buffer` for IPC transports."""

    records: list[TensorRecord]
    buffer: Any
    nbytes: int


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def pack_bucket(bucket: list[NamedTensor], *, device: torch.device | str = "cpu", shared: bool = False) -> PackedBucket:
    """Copy a bucket's tensors into one contiguous byte buffer (in shared memory when `shared`)."""
    records, offset = [], 0
    for name, tensor in bucket:
        records.append(TensorRecord(name, tensor.dtype, tuple(tensor.shape), offset, tensor_bytes(tensor)))
        offset = _aligned(offset + tensor_bytes(tensor))
    buffer = torch.empty(max(offset, 1), dtype=torch.uint8, device=device)
    if shared:
        buffer.share_memory_()
    for record, (_, tensor) in zip(records, bucket):
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        buffer[record.offset: record.offset + record.nbytes].copy_(flat)
    return PackedBucket(records=records, buffer=buffer, nbytes=sum(r.nbytes for r in records))


def unpack_bucket(packed: PackedBucket, buffer: torch.Tensor | None = None) -> list[NamedTensor]:
    """Views into the packed buffer with the original names, dtypes and shapes (no copy)."""
    source = packed.buffer if buffer is None else buffer
    out = []
    for r in packed.records:
        raw = source[r.offset: r.offset + r.nbytes]
        out.append((r.name, raw.view(r.dtype).reshape(r.shape)))
    return out


# ---------------------------------------------------------------------------- CUDA IPC (GPU, colocated)
def cuda_ipc_export(packed: PackedBucket) -> PackedBucket:
    """Replace the CUDA buffer by a picklable IPC handle; the sender must keep `packed` alive until acked."""
    from torch.multiprocessing.reductions import reduce_tensor

    if not packed.buffer.is_cuda:
        raise ValueError("CUDA IPC needs a bucket packed on a CUDA device (pack_bucket(..., device='cuda'))")
    return PackedBucket(records=packed.records, buffer=reduce_tensor(packed.buffer), nbytes=packed.nbytes)


def cuda_ipc_open(packed: PackedBucket, device_index: int | None = None) -> list[NamedTensor]:
    """Engine side: open the IPC handle (same physical GPU) and return views of the sender's buffer."""
    rebuild, args = packed.buffer
    args = list(args)
    if device_index is not None:
        args[6] = device_index  # the receiving process may number the shared GPU differently
    return unpack_bucket(packed, rebuild(*args))


# ---------------------------------------------------------------------------- NCCL broadcast (GPU, separate)
@dataclass
class NcclBucketSender:
    """Exporting rank (src 0 of `group`): records go through `send_records`, bytes by broadcast."""

    group: Any                               # a torch.distributed group spanning sender + engine ranks
    send_records: Callable[[PackedBucket], None]

    def send(self, bucket: list[NamedTensor]) -> int:
        packed = pack_bucket(bucket, device=torch.device("cuda", torch.cuda.current_device()))
        self.send_records(PackedBucket(records=packed.records, buffer=None, nbytes=packed.buffer.numel()))
        torch.distributed.broadcast(packed.buffer, src=torch.distributed.get_global_rank(self.group, 0),
                                    group=self.group)
        return packed.nbytes


def nccl_receive(packed_meta: PackedBucket, group: Any) -> list[NamedTensor]:
    """Engine rank: allocate the buffer, receive the broadcast, return views for `load_weights`."""
    buffer = torch.empty(packed_meta.nbytes, dtype=torch.uint8, device=torch.device("cuda", torch.cuda.current_device()))
    torch.distributed.broadcast(buffer, src=torch.distributed.get_global_rank(group, 0), group=group)
    return unpack_bucket(packed_meta, buffer)
