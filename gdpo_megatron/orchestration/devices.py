"""What Ray gave an actor: its node address, its GPU ids, and the CUDA device index to use.

Ray restricts every GPU actor to its own GPUs through CUDA_VISIBLE_DEVICES, so inside
the actor those GPUs are numbered from 0 in the order of that list; the device to select
is the position of the actor's (first) assigned GPU id in it, never its rank.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence


class DeviceError(RuntimeError):
    pass


def visible_device_index(assigned: Sequence[object], visible: Optional[str]) -> int:
    """The CUDA ordinal of `assigned[0]` among `visible` (CUDA_VISIBLE_DEVICES; None: unrestricted)."""
    if not assigned:
        raise DeviceError("Ray assigned this actor no GPU; it cannot select a CUDA device")
    first = str(assigned[0])
    if visible is None or not visible.strip():
        return int(first)
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    if first not in ids:
        raise DeviceError(f"Ray assigned GPU {first} but CUDA_VISIBLE_DEVICES={visible!r} does not list it")
    return ids.index(first)


@dataclass(frozen=True)
class ActorPlacement:
    """Where one actor runs, as Ray reports it from inside the actor."""

    node_ip: str
    node_id: str
    gpu_ids: tuple[str, ...]
    cuda_visible_devices: Optional[str]
    device_index: Optional[int]       # None on CPU (no GPU assigned)
    pid: int

    def to_dict(self) -> dict:
        return asdict(self)


def current_placement() -> ActorPlacement:
    import ray

    gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return ActorPlacement(
        node_ip=ray.util.get_node_ip_address(),
        node_id=ray.get_runtime_context().get_node_id(),
        gpu_ids=gpu_ids,
        cuda_visible_devices=visible,
        device_index=visible_device_index(gpu_ids, visible) if gpu_ids else None,
        pid=os.getpid(),
    )
