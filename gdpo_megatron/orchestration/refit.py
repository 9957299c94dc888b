"""The driver's side of weight refit: policy workers -> every engine actor, over the configured transport.

    refitter = create_refitter(recipe, policy_workers, engine_actors)   # once, at start-up
    metrics = refitter.refit()                                           # after every optimizer step

`generation.refit.transport` picks the class (`generation.transports.resolve_transport`).
Each refit is one `ray.get` over all policy workers and all engines together: exporters and
receivers run concurrently (they meet in collectives), and the call returns only once every
engine has loaded the whole stream and reset its prefix cache, so the next `generate` never
sees a mix of old and new weights.

Actors: policy workers mix in `RefitSender`, engine actors `RefitReceiver` (below).
"""

from __future__ import annotations

import socket

from gdpo_megatron.generation.buckets import iter_buckets


def _bucket_bytes(recipe) -> int:
    return int(recipe.generation.refit.bucket_mb * 2**20)


class ObjectStoreRefit:
    """Rank 0 puts CPU buckets into Ray's object store; every engine actor fetches them."""

    name = "object_store"

    def __init__(self, recipe, workers: list, engines: list) -> None:
        self.bucket_bytes, self.workers, self.engines = _bucket_bytes(recipe), workers, engines

    def refit(self) -> dict[str, float]:
        import ray

        exported = ray.get([w.export_weights.remote(self.bucket_bytes) for w in self.workers])
        refs = [ref for per_rank in exported for ref in per_rank]
        stats = ray.get([engine.update_weights.remote(refs) for engine in self.engines])
        return {"refit/bytes": float(stats[0]["bytes"]), "refit/buckets": float(stats[0]["buckets"])}


class CollectiveRefit:
    """Policy rank 0 broadcasts to every engine worker over one group created here, once."""

    name = "collective"

    def __init__(self, recipe, workers: list, engines: list) -> None:
        import ray

        self.bucket_bytes, self.workers, self.engines = _bucket_bytes(recipe), workers, engines
        host, port, backend = ray.get(workers[0].refit_rendezvous.remote())
        sizes = ray.get([engine.refit_group_size.remote() for engine in engines])
        world = 1 + sum(sizes)
        firsts = [1 + sum(sizes[:i]) for i in range(len(engines))]
        # All members must join at the same time: the group forms only when everyone is there.
        ray.get([workers[0].join_refit_group.remote(host, port, world, backend)]
                + [engine.join_refit_group.remote(host, port, first, world, backend)
                   for engine, first in zip(engines, firsts)])

    def refit(self) -> dict[str, float]:
        import ray

        results = ray.get([w.export_weights_collective.remote(self.bucket_bytes) for w in self.workers]
                          + [engine.receive_broadcast.remote() for engine in self.engines])
        sent = results[0]
        return {"refit/bytes": float(sent["bytes"]), "refit/buckets": float(sent["buckets"])}


class CudaIpcRefit:
    """Every engine worker reads the buckets of the policy rank on its own GPU through CUDA IPC."""

    name = "cuda_ipc"

    def __init__(self, recipe, workers: list, engines: list) -> None:
        import ray

        self.bucket_bytes, self.workers, self.engines = _bucket_bytes(recipe), workers, engines
        host, port, _ = ray.get(workers[0].refit_rendezvous.remote())
        policy_gpus = ray.get([w.gpu_uuid.remote() for w in workers])
        engine_gpus = ray.get([engine.gpu_uuids.remote() for engine in engines])
        channels = colocated_channels(policy_gpus, engine_gpus)
        ray.get([w.open_ipc_channel.remote(host, port, rank == 0, f"policy{rank}" if uuid in channels.senders else None)
                 for rank, (w, uuid) in enumerate(zip(workers, policy_gpus))])
        ray.get([engine.join_ipc_channel.remote(host, port, names) for engine, names in zip(engines, channels.receivers)])
        self.refit_id = 0

    def refit(self) -> dict[str, float]:
        import ray

        self.refit_id += 1
        results = ray.get([w.export_weights_ipc.remote(self.bucket_bytes, self.refit_id) for w in self.workers]
                          + [engine.receive_ipc.remote(self.refit_id) for engine in self.engines])
        sent = next(r for r in results[: len(self.workers)] if r["buckets"])
        return {"refit/bytes": float(sent["bytes"]), "refit/buckets": float(sent["buckets"])}


REFITTERS = {cls.name: cls for cls in (ObjectStoreRefit, CollectiveRefit, CudaIpcRefit)}


class _Channels:
    def __init__(self, senders: set[str], receivers: list[list[str]]) -> None:
        self.senders, self.receivers = senders, receivers


def colocated_channels(policy_gpus: list[str], engine_gpus: list[list[str]]) -> _Channels:
    """Pair each engine worker with the policy rank on the same GPU (by UUID): channel `policy<rank>`."""
    by_gpu = {uuid: rank for rank, uuid in enumerate(policy_gpus)}
    receivers = []
    for index, gpus in enumerate(engine_gpus):
        missing = [uuid for uuid in gpus if uuid not in by_gpu]
        if missing:
            raise RuntimeError(f"generation.refit.transport=cuda_ipc: engine {index} runs on GPU(s) {missing} "
                               "that hold no policy rank; CUDA IPC needs colocated placement")
        receivers.append([f"policy{by_gpu[uuid]}" for uuid in gpus])
    used = {uuid for gpus in engine_gpus for uuid in gpus}
    return _Channels(senders=used, receivers=receivers)


def create_refitter(recipe, workers: list, engines: list):
    """The refitter of `generation.refit.transport` on this cluster (set-up done, ready to refit)."""
    import ray

    from gdpo_megatron.generation.transports import resolve_transport

    # The policy workers' devices decide, not the driver's (which often has no GPU).
    on_gpu = ray.get(workers[0].refit_rendezvous.remote())[2] == "nccl"
    return REFITTERS[resolve_transport(recipe.generation, on_gpu)](recipe, workers, engines)


# ---------------------------------------------------------------------------- actor mix-ins
class RefitSender:
    """Mixed into PolicyWorker (needs `self.policy`, `self.rank`): the exporting side of every transport."""

    def export_weights(self, bucket_bytes: int) -> list:
        """Put HF-named CPU buckets into the object store; global rank 0 returns their refs.

        Every rank must drain the export stream (it gathers TP shards and PP stages with
        collectives) and every rank sees every tensor, so only rank 0 publishes them.
        """
        import ray

        stream = self.policy.export_hf_weights()
        if self.rank != 0:
            for _ in stream:
                pass
            return []
        cpu = ((name, tensor.detach().to("cpu").contiguous()) for name, tensor in stream)
        return [ray.put(bucket) for bucket in iter_buckets(cpu, bucket_bytes)]

    def refit_rendezvous(self) -> tuple[str, int, str]:
        """(address on this node, a free port, group backend) for the refit group that rank 0 hosts."""
        from gdpo_megatron.generation.collective import group_backend

        import ray

        host = ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        return host, port, group_backend()

    def join_refit_group(self, host: str, port: int, world_size: int, backend: str) -> int:
        from gdpo_megatron.generation.collective import join_refit_group

        self._refit_group = join_refit_group(host, port, 0, world_size, backend)
        return 0

    def export_weights_collective(self, bucket_bytes: int) -> dict[str, int]:
        """Rank 0 broadcasts to the refit group; the other ranks take part in the export's gathers."""
        from gdpo_megatron.generation.collective import broadcast_weights, drain

        stream = self.policy.export_hf_weights()
        group = getattr(self, "_refit_group", None)
        if group is None:
            drain(stream)
            return {"buckets": 0, "tensors": 0, "bytes": 0}
        return broadcast_weights(group, stream, bucket_bytes)

    def gpu_uuid(self) -> str:
        from gdpo_megatron.generation.cuda_ipc import current_gpu_uuid

        return current_gpu_uuid()

    def open_ipc_channel(self, host: str, port: int, is_server: bool, channel: str | None) -> None:
        from gdpo_megatron.generation.cuda_ipc import control_store

        self._ipc_store = control_store(host, port, is_server)
        self._ipc_channel = channel

    def export_weights_ipc(self, bucket_bytes: int, refit_id: int) -> dict[str, int]:
        from gdpo_megatron.generation.collective import drain
        from gdpo_megatron.generation.cuda_ipc import send_over_ipc

        stream = self.policy.export_hf_weights()
        if getattr(self, "_ipc_channel", None) is None:
            drain(stream)
            return {"buckets": 0, "tensors": 0, "bytes": 0}
        return send_over_ipc(self._ipc_store, self._ipc_channel, refit_id, stream, bucket_bytes)


class RefitReceiver:
    """Mixed into GenerationWorker (needs `self.backend`, a VllmBackend): the receiving side."""

    def refit_group_size(self) -> int:
        return self.backend.refit_group_size

    def join_refit_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str) -> list[int]:
        return self.backend.join_refit_group(host, port, first_rank, world_size, backend)

    def receive_broadcast(self) -> dict[str, float]:
        stats = self.backend.receive_broadcast()
        return {"bytes": stats.bytes, "seconds": stats.seconds, "tensors": stats.tensors}

    def gpu_uuids(self) -> list[str]:
        """The GPUs of this actor's engine workers, in tensor-parallel order (as the workers report them)."""
        return self.backend.device_uuids()

    def join_ipc_channel(self, host: str, port: int, channels: list[str]) -> list[str]:
        return self.backend.join_ipc_channel(host, port, channels)

    def receive_ipc(self, refit_id: int) -> dict[str, float]:
        stats = self.backend.receive_ipc(refit_id)
        return {"bytes": stats.bytes, "seconds": stats.seconds, "tensors": stats.tensors}
