"""Policy checkpoints: the full training state for resume, and layout-independent weights.

Resume checkpoints (`save_policy_checkpoint` / `load_policy_checkpoint`) hold, per rank,
the local model shards, the inner Adam state of this rank's optimizer shard (moments and
step count), its fp32 master parameters and the LR schedule, in `rank-XXXXX.pt` files.
They reload only into the same TP/PP/DP layout, and they reload exactly (the CPU tests
check bit-exact resume). megatron-core 0.16's distributed-checkpoint form of the
distributed optimizer did not restore exactly on CPU, which is why this does not use it.

Weights alone (`save_model_weights` / `load_model_weights`) use megatron-core's
distributed checkpointing, which reshards into another TP/PP layout. It starts worker
processes (spawn): scripts that call it need an `if __name__ == "__main__":` guard.

Every save writes into `<dir>.partial` and rank 0 renames it to `<dir>` once all ranks
are done, so a crash mid-save never leaves a directory that looks complete.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

_PARTIAL_SUFFIX = ".partial"
FORMAT_VERSION = 1


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gpt(chunk):
    # Keys must not depend on wrappers (DDP, Float16Module): a checkpoint loads into any of them.
    from .model import unwrap

    return unwrap(chunk)


def _model_sharded_state(model_chunks) -> dict:
    if len(model_chunks) == 1:
        return {"model": _gpt(model_chunks[0]).sharded_state_dict()}
    return {f"model{i}": _gpt(chunk).sharded_state_dict() for i, chunk in enumerate(model_chunks)}


def _inner_optimizers(optimizer) -> list:
    """The torch optimizers that hold this rank's shard of the state (one per chained optimizer)."""
    return [sub.optimizer for sub in getattr(optimizer, "chained_optimizers", [optimizer])]


def _master_params(inner) -> list[torch.Tensor]:
    return [p for group in inner.param_groups for p in group["params"]]


def _begin(final: Path) -> Path:
    partial = final.with_name(final.name + _PARTIAL_SUFFIX)
    if _is_rank0():
        if final.exists():
            raise FileExistsError(f"policy checkpoint {final} already exists; choose a new directory")
        shutil.rmtree(partial, ignore_errors=True)  # a leftover from a crashed save
        partial.mkdir(parents=True)
    _barrier()
    return partial


def _publish(partial: Path, final: Path) -> Path:
    _barrier()
    if _is_rank0():
        partial.rename(final)
    _barrier()
    return final


def save_policy_checkpoint(directory: str | Path, model_chunks, optimizer, scheduler, extra: dict | None = None) -> Path:
    """Collective: every rank of the policy calls it with the same directory."""
    final = Path(directory)
    partial = _begin(final)
    inner = _inner_optimizers(optimizer)
    state = {
        "format_version": FORMAT_VERSION,
        "world_size": _world(),
        "model": [_gpt(chunk).state_dict() for chunk in model_chunks],
        "optimizer": [opt.state_dict() for opt in inner],
        "master_params": [[p.detach().clone() for p in _master_params(opt)] for opt in inner],
        "scheduler": scheduler.state_dict(),
        "policy_state": dict(extra or {}),
    }
    torch.save(state, partial / f"rank-{_rank():05d}.pt")
    return _publish(partial, final)


def load_policy_checkpoint(directory: str | Path, model_chunks, optimizer, scheduler) -> dict:
    """Collective: restores weights, optimizer state and schedule in place; returns the saved `extra` dict."""
    path = Path(directory)
    if not path.is_dir():
        hint = " (an unfinished save left a .partial directory)" if path.with_name(path.name + _PARTIAL_SUFFIX).exists() else ""
        raise FileNotFoundError(f"policy checkpoint {path} does not exist{hint}")
    file = path / f"rank-{_rank():05d}.pt"
    if not file.is_file():
        raise FileNotFoundError(f"policy checkpoint {path} has no {file.name}: it was written by another layout "
                                f"(files: {', '.join(sorted(p.name for p in path.glob('rank-*.pt')))})")
    state = torch.load(file, map_location="cpu", weights_only=False)
    if state["world_size"] != _world():
        raise ValueError(f"policy checkpoint {path} was written by {state['world_size']} ranks, this run has "
                         f"{_world()}: resume needs the same layout (convert weights with save_weights to change it)")
    for chunk, weights in zip(model_chunks, state["model"]):
        _gpt(chunk).load_state_dict(weights)
    for inner, saved_state, masters in zip(_inner_optimizers(optimizer), state["optimizer"], state["master_params"]):
        inner.load_state_dict(saved_state)
        with torch.no_grad():  # fp32 master shards (views of the parameters for fp32 models)
            for param, saved in zip(_master_params(inner), masters):
                param.copy_(saved)
    # megatron's scheduler *adds* the saved step count to its current one, and a fresh
    # scheduler has already advanced once (see build_scheduler): start it from zero.
    scheduler.num_steps = 0
    scheduler.load_state_dict(state["scheduler"])
    return dict(state.get("policy_state", {}))


def save_model_weights(directory: str | Path, model_chunks) -> Path:
    """Weights only (no optimizer), in megatron's layout-independent sharded format; atomic like above."""
    from megatron.core import dist_checkpointing

    final = Path(directory)
    partial = _begin(final)
    dist_checkpointing.save(_model_sharded_state(model_chunks), str(partial))
    return _publish(partial, final)


def load_model_weights(directory: str | Path, model_chunks) -> None:
    """Load weights saved by either function above, into any TP/PP layout megatron can reshard to."""
    from megatron.core import dist_checkpointing

    loaded = dist_checkpointing.load(_model_sharded_state(model_chunks), str(directory))
    for i, chunk in enumerate(model_chunks):
        _gpt(chunk).load_state_dict(loaded["model" if len(model_chunks) == 1 else f"model{i}"])
