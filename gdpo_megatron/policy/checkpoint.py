"""Policy checkpoints with megatron-core's distributed checkpointing (model + optimizer + scheduler + step).

Every rank writes its own shards collectively into `<dir>.partial`; once all ranks are
done, rank 0 renames it to `<dir>` (atomic on one filesystem), so a crash mid-save never
leaves a directory that looks complete. The trainer writes its run-level state next to it.

The optimizer is saved in megatron's `dp_reshardable` form (0.16.1 rejects the flattened
ranges of `fully_sharded_model_space`): a load into the same TP/PP layout restores exactly (the CPU
test checks bit-exact resume). dist_checkpointing's save starts worker processes
(spawn): scripts that call it need an `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist

_OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}
_PARTIAL_SUFFIX = ".partial"


def _is_rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


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


def _sharded_state(model_chunks, optimizer, scheduler, extra: dict, is_loading: bool) -> dict:
    state = _model_sharded_state(model_chunks)
    models = {}
    for value in state.values():
        models.update(value)
    state["optimizer"] = optimizer.sharded_state_dict(models, is_loading=is_loading, metadata=_OPTIMIZER_METADATA)
    state["scheduler"] = scheduler.state_dict()
    state["policy_state"] = dict(extra)
    return state


def save_policy_checkpoint(directory: str | Path, model_chunks, optimizer, scheduler, extra: dict | None = None) -> Path:
    """Collective: every rank of the policy calls it with the same directory."""
    from megatron.core import dist_checkpointing

    final = Path(directory)
    partial = final.with_name(final.name + _PARTIAL_SUFFIX)
    if _is_rank0():
        if final.exists():
            raise FileExistsError(f"policy checkpoint {final} already exists; choose a new directory")
        shutil.rmtree(partial, ignore_errors=True)  # a leftover from a crashed save
        partial.mkdir(parents=True)
    _barrier()
    state = _sharded_state(model_chunks, optimizer, scheduler, extra or {}, is_loading=False)
    dist_checkpointing.save(state, str(partial))
    _barrier()
    if _is_rank0():
        partial.rename(final)
    _barrier()
    return final


def _ensure_optimizer_state(optimizer) -> None:
    """A fresh optimizer has no Adam state to describe; megatron's own init creates zeros to load into."""
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        init = getattr(sub, "init_state_fn", None)
        if init is not None and not sub.optimizer.state:
            init(sub.optimizer, sub.config)
            for param_state in sub.optimizer.state.values():  # torch Adam keeps its count as a tensor
                param_state.setdefault("step", torch.tensor(0.0))


def load_policy_checkpoint(directory: str | Path, model_chunks, optimizer, scheduler) -> dict:
    """Collective: restores weights, optimizer state and schedule in place; returns the saved `extra` dict."""
    from megatron.core import dist_checkpointing

    path = Path(directory)
    if not path.is_dir():
        hint = " (an unfinished save left a .partial directory)" if path.with_name(path.name + _PARTIAL_SUFFIX).exists() else ""
        raise FileNotFoundError(f"policy checkpoint {path} does not exist{hint}")
    _ensure_optimizer_state(optimizer)
    state = _sharded_state(model_chunks, optimizer, scheduler, {}, is_loading=True)
    loaded = dist_checkpointing.load(state, str(path))
    for i, chunk in enumerate(model_chunks):
        _gpt(chunk).load_state_dict(loaded["model" if len(model_chunks) == 1 else f"model{i}"])
    with torch.no_grad():  # megatron copies into fp32 parameters (views of leaves) in place
        optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    return dict(loaded.get("policy_state", {}))


def save_model_weights(directory: str | Path, model_chunks) -> Path:
    """Weights only (no optimizer), in megatron's layout-independent sharded format; atomic like above."""
    from megatron.core import dist_checkpointing

    final = Path(directory)
    partial = final.with_name(final.name + _PARTIAL_SUFFIX)
    if _is_rank0():
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier()
    dist_checkpointing.save(_model_sharded_state(model_chunks), str(partial))
    _barrier()
    if _is_rank0():
        partial.rename(final)
    _barrier()
    return final


def load_model_weights(directory: str | Path, model_chunks) -> None:
    """Load weights saved by either function above, into any TP/PP layout megatron can reshard to."""
    from megatron.core import dist_checkpointing

    loaded = dist_checkpointing.load(_model_sharded_state(model_chunks), str(directory))
    for i, chunk in enumerate(model_chunks):
        _gpt(chunk).load_state_dict(loaded["model" if len(model_chunks) == 1 else f"model{i}"])
