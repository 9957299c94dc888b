"""Run a function on N fresh local processes forming one torch.distributed world.

    results = spawn_local(fn, world_size=4, args=(a, b))   # [fn(ctx, a, b) on rank 0, ..., rank 3]

`fn` must be importable (a module-level function, not defined under `__main__`), because
the processes are started with the spawn method. Each process gets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT in its environment (so `init_distributed(parallel)` needs no
arguments), one CPU thread, and a `SpawnContext`; what it returns is pickled back to the
caller through a temporary directory (keep it small: numbers, CPU tensors).
Scripts calling this need the `if __name__ == "__main__":` guard (spawned children import
the main module).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .setup import free_port


@dataclass(frozen=True)
class SpawnContext:
    rank: int
    world_size: int
    master_port: int


def _entry(rank: int, fn: Callable, world_size: int, port: int, args: tuple, out_dir: str, threads: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS=str(threads))
    import torch

    torch.set_num_threads(threads)
    result = fn(SpawnContext(rank, world_size, port), *args)
    with open(Path(out_dir) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(result, f)


def spawn_local(fn: Callable[..., Any], world_size: int, args: tuple = (), threads: int = 1) -> list[Any]:
    """Run `fn(ctx, *args)` on `world_size` processes; return their results in rank order."""
    import torch.multiprocessing as mp

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gdpo-spawn-") as out_dir:
        mp.spawn(_entry, args=(fn, world_size, port, args, out_dir, threads), nprocs=world_size, join=True)
        results = []
        for rank in range(world_size):
            with open(Path(out_dir) / f"rank{rank}.pkl", "rb") as f:
                results.append(pickle.load(f))
    return results
