"""How weight buckets travel from the policy to the engines, and which transport a run uses.

Every transport moves a bucket as ONE packed byte buffer plus a small list of
(name, dtype, shape, offset) records: one shared-memory segment, IPC handle or broadcast
per bucket instead of one per tensor. The transports (`generation.refit.transport`):

- `object_store`: CPU buckets through Ray's object store (any host; the fallback, and the
  megatron backend's transport).
- `collective`: a broadcast group of the exporting policy rank and every engine worker,
  gloo on CPU and NCCL on GPU (`collective.py`); the default for separate engines.
- `cuda_ipc`: colocated GPU engines open CUDA IPC handles of buckets packed on the GPU they
  share with a policy rank, no copy through host memory (`cuda_ipc.py`); GPU only.
Where one process drives several engine child processes (`VllmBackend` with num_engines > 1,
outside the trainer, which starts one actor per engine), buckets reach the children through
shared memory (`engine_process.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.generation import COLOCATED_COLLECTIVE
from gdpo_megatron.registry import Registry

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


# ---------------------------------------------------------------------------- which transport
@dataclass(frozen=True)
class TransportSpec:
    name: str
    gpu_only: bool
    colocated_only: bool
    summary: str


TRANSPORTS: Registry[TransportSpec] = Registry("refit transport")
for _spec in (
    TransportSpec("object_store", False, False, "CPU buckets through Ray's object store"),
    TransportSpec("collective", False, False, "broadcast over a gloo (CPU) / NCCL (GPU) group of exporter and engines"),
    TransportSpec("cuda_ipc", True, True, "CUDA IPC handles of GPU buckets shared with the colocated engine"),
):
    TRANSPORTS.register(_spec.name)(_spec)


def resolve_transport(generation_config, on_gpu: bool) -> str:
    """The transport `generation.refit.transport` selects on this host (`auto` resolved), or a ConfigError.

    `auto`: cuda_ipc for colocated GPU engines, collective otherwise (on CPU hosts too, where
    a gloo broadcast refits 1.7-2.4x faster than the object store, benchmarks/bench_refit.py);
    object_store for the megatron backend.
    """
    name = generation_config.refit.transport
    if name == "auto":
        if generation_config.backend != "vllm":
            return "object_store"
        return "cuda_ipc" if generation_config.colocated and on_gpu else "collective"
    spec = TRANSPORTS.get(name)
    if spec.gpu_only and not on_gpu:
        raise ConfigError(f"generation.refit.transport: {name} needs GPUs and this host has none; "
                          "use collective, object_store or auto")
    if spec.colocated_only and not generation_config.colocated:
        raise ConfigError(f"generation.refit.transport: {name} needs colocated engines (generation.colocated: true)")
    if name == "collective" and on_gpu and generation_config.colocated:
        raise ConfigError(f"generation.refit.transport: {COLOCATED_COLLECTIVE}")
    return name
