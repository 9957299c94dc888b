"""Accelerator kinds the planner knows: usable memory and FP8 support.

Memory is what `nvidia-smi` reports as total for the board (MiB / 1024 = GiB), which is
a little below the marketing number; the CUDA context and NCCL take their share of it
later (planner/memory.py RUNTIME_RESERVE_GIB).
"""

from __future__ import annotations

from dataclasses import dataclass

from gdpo_megatron.config.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class GpuKind:
    name: str
    memory_gib: float
    fp8: bool          # Hopper and newer (and Ada) have FP8 tensor cores


GPU_KINDS: dict[str, GpuKind] = {g.name: g for g in [
    GpuKind("A100-40GB", 39.4, fp8=False),
    GpuKind("A100-80GB", 79.2, fp8=False),
    GpuKind("L40S-48GB", 44.4, fp8=True),
    GpuKind("H100-80GB", 79.6, fp8=True),
    GpuKind("H100-94GB", 93.1, fp8=True),     # H100 NVL
    GpuKind("H200-141GB", 139.8, fp8=True),
    GpuKind("B200-192GB", 179.1, fp8=True),
    GpuKind("GB200-186GB", 184.0, fp8=True),
]}


def gpu_kind(name: str, memory_gib: float | None = None) -> GpuKind:
    """The kind named in `cluster.gpu_type`; `cluster.gpu_memory_gib` overrides or defines it."""
    known = GPU_KINDS.get(name)
    if known is None:
        matches = [k for k in GPU_KINDS if k.lower() == name.lower()]
        known = GPU_KINDS[matches[0]] if matches else None
    if memory_gib is not None:
        return GpuKind(name, float(memory_gib), fp8=known.fp8 if known else True)
    if known is None:
        raise ConfigError(f"gpu_type: unknown accelerator {name!r}{did_you_mean(name, GPU_KINDS)}; "
                          f"known: {', '.join(GPU_KINDS)} (or set cluster.gpu_memory_gib for another kind)")
    return known
