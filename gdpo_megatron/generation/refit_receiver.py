"""Refit receivers that run inside vLLM's workers (`worker_extension_cls`).

vLLM mixes this class into its worker class, so `llm.collective_rpc("gdpo_...")` runs these
methods in every worker of an engine: in the engine's own process for an in-process engine
(CPU, or one GPU), in each of vLLM's worker processes for tensor parallelism > 1. The same
code therefore serves every engine shape.

Engine tensor parallelism > 1: every worker receives the FULL HF tensors and vLLM's own
weight loaders cut its shard (the path checkpoint loading takes). Sending shards instead would
mean re-implementing each model's fused QKV / gate-up sharding on the trainer side; a broadcast
costs the sender the same for one receiver or for all, so full tensors cost no sender time.

Method names carry a `gdpo_` prefix: vLLM refuses an extension whose names clash with the worker's.
"""

from __future__ import annotations

from typing import Any

from .buckets import tensor_bytes


def _tensor_parallel_rank() -> int:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()
    except (AssertionError, ImportError):
        return 0


class RefitWorkerExtension:
    """Mixed into vLLM's worker: joins the refit group / IPC channel and loads what arrives."""

    # ------------------------------------------------------------------ devices
    def gdpo_device_uuid(self) -> str:
        """This worker's GPU identity ("" on CPU): pairs an engine worker with the policy rank on its GPU."""
        from .cuda_ipc import current_gpu_uuid

        return current_gpu_uuid()

    def gdpo_device_used_bytes(self):
        """Memory in use on this worker's GPU (None on CPU); what sleep frees shows here."""
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return total - free

    # ------------------------------------------------------------------ collective
    def gdpo_join_refit_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str) -> int:
        from .collective import join_refit_group

        rank = first_rank + _tensor_parallel_rank()
        self._gdpo_refit_group = join_refit_group(host, port, rank, world_size, backend)
        return rank

    def gdpo_receive_broadcast(self) -> tuple[int, int]:
        """One whole refit from the group, loaded by a single in-place reload (see VllmEngine)."""
        from .collective import receive_weights

        group = getattr(self, "_gdpo_refit_group", None)
        if group is None:
            raise RuntimeError("this engine worker has not joined a refit group (join_refit_group first)")
        counted = [0, 0]

        def counting():
            for name, tensor in receive_weights(group):
                counted[0] += 1
                counted[1] += tensor_bytes(tensor)
                yield name, tensor

        self.reload_weights(weights_iterator=counting())
        return counted[0], counted[1]

    def gdpo_leave_refit_group(self) -> None:
        group = getattr(self, "_gdpo_refit_group", None)
        if group is not None:
            group.close()
            self._gdpo_refit_group = None

    # ------------------------------------------------------------------ CUDA IPC
    def gdpo_join_ipc_channel(self, host: str, port: int, channels: list[str]) -> str:
        """`channels[tp_rank]` names the colocated policy rank this worker reads from."""
        from .cuda_ipc import control_store

        self._gdpo_ipc_store = control_store(host, port, is_server=False)
        self._gdpo_ipc_channel = channels[_tensor_parallel_rank()]
        return self._gdpo_ipc_channel

    def gdpo_receive_ipc(self, refit_id: int) -> tuple[int, int]:
        """One whole refit from the colocated policy rank's buckets, through vLLM's in-place reload.

        The reload may hold a tensor until every weight of its layer has arrived, while the
        sender frees a bucket as soon as it is acknowledged; so each bucket is copied on the
        device (cheap next to the reload) and acknowledged before its tensors are handed on.
        """
        from .cuda_ipc import receive_over_ipc

        store: Any = getattr(self, "_gdpo_ipc_store", None)
        if store is None:
            raise RuntimeError("this engine worker has not joined an IPC channel (join_ipc_channel first)")
        counted = [0, 0]

        def owned_copies():
            for views, acknowledge in receive_over_ipc(store, self._gdpo_ipc_channel, refit_id):
                copies = [(name, tensor.clone()) for name, tensor in views]
                acknowledge()
                counted[0] += len(copies)
                counted[1] += sum(tensor_bytes(t) for _, t in copies)
                yield from copies

        self.reload_weights(weights_iterator=owned_copies())
        return counted[0], counted[1]
