"""Process groups for the policy: torch.distributed + megatron-core model parallel state.

Contract (other parts build on it):

    state = init_distributed(policy.parallel)         # once per process, before build_model
    ...                                               # build_model, train, export
    destroy_distributed()                             # tears down megatron + torch groups

`init_distributed` reads RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT (and LOCAL_RANK, the
device index among the visible devices, on GPU) from the environment unless given explicitly, picks nccl with CUDA and gloo
without, applies `cpu_compat` only when CUDA is absent, creates megatron's TP/PP/DP
groups from `parallel` (DP = world / (TP*PP)), and seeds torch and megatron's RNG
tracker (same seed on every rank; megatron offsets the tensor-parallel stream by TP rank).
A single process without any environment gets world 1 on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import datetime
import os
import random
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gdpo_megatron.config.policy import ParallelConfig

from . import cpu_compat


@dataclass(frozen=True)
class ParallelState:
    """Where this process sits in the layout."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    backend: str
    device: torch.device

    @property
    def is_first_pp_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_pp_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_device(rank: int) -> int:
    """The CUDA ordinal of this process: LOCAL_RANK (an index among its visible devices).

    torchrun sets LOCAL_RANK to the rank on the node (all GPUs visible); a Ray actor sees only
    its own GPUs, so the policy worker sets LOCAL_RANK to its GPU's position among them.
    """
    count = torch.cuda.device_count()
    index = int(os.environ.get("LOCAL_RANK", rank % max(count, 1)))
    if not 0 <= index < count:
        raise RuntimeError(f"LOCAL_RANK={index} but this process sees {count} CUDA device(s) "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); "
                           "LOCAL_RANK must index the visible devices, not the global rank")
    return index


def init_distributed(
    parallel: ParallelConfig,
    backend: str | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    seed: int = 1234,
    timeout_s: float = 600.0,
) -> ParallelState:
    """Initialise torch.distributed and megatron-core's model-parallel groups; see module doc."""
    from megatron.core import parallel_state as mpu
    from megatron.core import tensor_parallel

    from gdpo_megatron.parallel_layout import validate_world

    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    validate_world(parallel, world_size)

    if use_cuda:
        torch.cuda.set_device(local_device(rank))
    else:
        cpu_compat.apply()

    if not dist.is_initialized():
        master_addr = master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1")
        if master_port is None and "MASTER_PORT" in os.environ:
            master_port = int(os.environ["MASTER_PORT"])
        if master_port is None and world_size == 1:
            # One process needs no rendezvous: an in-process store cannot lose a race for a port.
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=rank, world_size=1,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        else:
            if master_port is None:
                raise RuntimeError("init_distributed: MASTER_PORT is not set and world_size > 1; "
                                   "pass master_port= or export MASTER_ADDR/MASTER_PORT")
            dist.init_process_group(
                backend=backend,
                init_method=f"tcp://{master_addr}:{master_port}",
                rank=rank,
                world_size=world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
            )

    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor,
            pipeline_model_parallel_size=parallel.pipeline,
            virtual_pipeline_model_parallel_size=parallel.virtual_pipeline,
        )

    random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
    # model_parallel_cuda_manual_seed leaves the (CPU, on this path) generator on the
    # data-parallel seed; reset it so every rank starts identical regardless of path.
    torch.manual_seed(seed)

    return current_state(backend)


def current_state(backend: str | None = None) -> ParallelState:
    """The layout of this process, from an already initialised megatron parallel state."""
    from megatron.core import parallel_state as mpu

    return ParallelState(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        tp_size=mpu.get_tensor_model_parallel_world_size(),
        pp_rank=mpu.get_pipeline_model_parallel_rank(),
        pp_size=mpu.get_pipeline_model_parallel_world_size(),
        dp_rank=mpu.get_data_parallel_rank(),
        dp_size=mpu.get_data_parallel_world_size(),
        backend=backend or dist.get_backend(),
        device=torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"),
    )


def destroy_distributed() -> None:
    """Destroy megatron's groups and the default process group (safe to call twice)."""
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
