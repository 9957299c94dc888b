"""`generation.backend: vllm`: one or more vLLM engines fed by bucketed weight refit.

Placement: one engine runs in the calling process (its weights are reloaded in place);
with `num_engines > 1` each engine is a child process and buckets travel through shared
memory. Prompts are split into contiguous, equal slices over the engines and the results
are concatenated back in prompt order; each rollout's seed depends only on its prompt
index, so the split does not change seeded samples.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable, Optional

import torch

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.partition import even_ranges

from .backend import BACKENDS
from .buckets import NamedTensor, flatten, iter_buckets
from .engine_process import EngineProcess
from .transports import pack_bucket, resolve_transport
from .types import RefitStats, Rollout, SamplingSettings, check_grouped
from .vllm_engine import EngineOptions, VllmEngine

log = logging.getLogger(__name__)




def engine_options(recipe, model_path: str) -> EngineOptions:
    gen = recipe.generation
    return EngineOptions(
        model_path=model_path,
        tensor_parallel=gen.tensor_parallel,
        dtype=gen.dtype,
        max_model_len=gen.max_model_len,
        max_num_seqs=gen.max_num_seqs,
        enforce_eager=gen.enforce_eager,
        gpu_memory_utilization=gen.gpu_memory_utilization,
        cpu_kv_cache_bytes=gen.cpu_kv_cache_mb * 2**20,
        logprobs=gen.logprobs,
        enable_sleep_mode=gen.colocated and torch.cuda.is_available(),
        seed=recipe.seed,
    )


def check_placement(recipe, on_gpu: bool) -> None:
    gen = recipe.generation
    resolve_transport(gen, on_gpu)  # first: a GPU-only transport on a CPU host names its own key
    if not on_gpu and gen.tensor_parallel != 1:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ConfigError("generation.tensor_parallel: a CPU vLLM engine runs in one process; set it to 1 "
                          f"(this process sees no GPU; CUDA_VISIBLE_DEVICES={visible!r})")


class VllmBackend:
    """Spreads prompts over engines and refits all of them between generations."""

    def __init__(self, options: EngineOptions, num_engines: int = 1, bucket_bytes: int = 256 * 2**20) -> None:
        self.bucket_bytes = bucket_bytes
        self.weight_version = 0
        self.local: Optional[VllmEngine] = None
        self.remote: list[EngineProcess] = []
        if num_engines == 1:
            self.local = VllmEngine(options)
        else:
            try:
                for i in range(num_engines):
                    self.remote.append(EngineProcess(options, i))
            except Exception:
                self.close()
                raise
        self.num_engines = num_engines
        self._tensor_parallel = options.tensor_parallel
        self._asleep = False

    @property
    def tokenizer(self):
        return self.local.tokenizer if self.local is not None else None

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingSettings) -> list[Rollout]:
        indexed = list(enumerate(prompt_token_ids))
        if self.local is not None:
            rollouts = self.local.generate(indexed, sampling)
        else:
            slices = even_ranges(len(indexed), len(self.remote))
            busy = []
            for engine, (start, end) in zip(self.remote, slices):
                if end > start:
                    engine.start_generate(indexed[start:end], sampling)
                    busy.append(engine)
            rollouts = [r for engine in busy for r in engine.finish_generate()]
        check_grouped(rollouts, len(prompt_token_ids), sampling.n)
        return rollouts

    def update_weights(self, named_tensors: Iterable[NamedTensor]) -> RefitStats:
        started = time.perf_counter()
        stats = RefitStats()
        buckets = iter_buckets(named_tensors, self.bucket_bytes)
        if self.local is not None:
            def counted():
                for bucket in buckets:
                    stats.buckets += 1
                    yield bucket

            stats.tensors, stats.bytes = self.local.load_weights(flatten(counted()))
            stats.per_engine_seconds = [time.perf_counter() - started]
        else:
            for engine in self.remote:
                engine.begin_refit()
            for bucket in buckets:
                # One shared-memory copy per bucket, mapped by every engine.
                packed = pack_bucket(bucket, shared=True)
                for engine in self.remote:
                    engine.send_bucket(packed)
                stats.buckets += 1
            results = [engine.end_refit() for engine in self.remote]
            stats.tensors, stats.bytes = results[0]
        self.weight_version += 1
        stats.weight_version = self.weight_version
        stats.seconds = time.perf_counter() - started
        return stats

    # ------------------------------------------------------------------ collective / CUDA IPC refits
    @property
    def refit_group_size(self) -> int:
        """Members this backend adds to a collective refit group: every worker of every engine."""
        engines = [self.local] if self.local is not None else self.remote
        return sum(self._tensor_parallel for _ in engines)

    def join_refit_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str) -> list[int]:
        """Every engine worker joins the group (blocks until all members have); returns their ranks."""
        if self.local is not None:
            return list(self.local.join_refit_group(host, port, first_rank, world_size, backend))
        for i, engine in enumerate(self.remote):
            engine.start_call("join_refit_group", host, port, first_rank + i * self._tensor_parallel, world_size,
                              backend)
        return [rank for engine in self.remote for rank in engine.wait()]

    def receive_broadcast(self) -> RefitStats:
        """One collective refit: every engine receives and loads the same broadcast, then all acknowledge."""
        started = time.perf_counter()
        if self.local is not None:
            results = [self.local.receive_broadcast()]
        else:
            for engine in self.remote:
                engine.start_call("receive_broadcast")
            results = [engine.wait() for engine in self.remote]
            for engine in self.remote:
                engine.weight_version += 1
        return self._received(results, started)

    def join_ipc_channel(self, host: str, port: int, channels: list[str]) -> list[str]:
        if self.local is None:
            raise RuntimeError("generation.refit.transport=cuda_ipc: a colocated engine runs in its actor's process")
        return list(self.local.join_ipc_channel(host, port, channels))

    def receive_ipc(self, refit_id: int) -> RefitStats:
        started = time.perf_counter()
        if self.local is None:
            raise RuntimeError("generation.refit.transport=cuda_ipc: a colocated engine runs in its actor's process")
        return self._received([self.local.receive_ipc(refit_id)], started)

    def _received(self, results: list[tuple[int, int]], started: float) -> RefitStats:
        if len({tuple(r) for r in results}) != 1:
            raise RuntimeError(f"engines loaded different refits: (tensors, bytes) per engine = {results}")
        self.weight_version += 1
        stats = RefitStats()
        stats.tensors, stats.bytes = results[0]
        stats.weight_version = self.weight_version
        stats.seconds = time.perf_counter() - started
        return stats

    def _one_engine(self, what: str) -> VllmEngine:
        if self.local is None:
            raise RuntimeError(f"{what} is asked of one engine in this process (one engine actor per engine)")
        return self.local

    def device_uuids(self) -> list[str]:
        """GPU identities of the engine's workers, in tensor-parallel order ([] on CPU)."""
        return self._one_engine("device_uuids").device_uuids()

    def device_used_bytes(self) -> list[int]:
        """Device memory in use on each of the engine's workers ([] on CPU)."""
        return self._one_engine("device_used_bytes").device_used_bytes()

    def sleep(self, level: int = 1) -> set[str]:
        if self.local is None:
            raise RuntimeError("sleep/wake is for one engine in this process (one engine actor per engine)")
        return self.local.sleep(level)

    def wake(self, tags=None) -> set[str]:
        if self.local is None:
            raise RuntimeError("sleep/wake is for one engine in this process (one engine actor per engine)")
        return self.local.wake(tags)

    def close(self) -> None:
        if self.local is not None:
            self.local.close()
            self.local = None
        for engine in self.remote:
            engine.close()
        self.remote = []


@BACKENDS.register("vllm")
def create_vllm_backend(recipe, model_path: str, *, num_engines: Optional[int] = None, **_: Any) -> VllmBackend:
    """`num_engines` overrides the recipe's: an engine actor of the trainer holds exactly one."""
    check_placement(recipe, torch.cuda.is_available())
    engines = recipe.generation.num_engines if num_engines is None else num_engines
    return VllmBackend(engine_options(recipe, model_path), num_engines=engines,
                       bucket_bytes=int(recipe.generation.refit.bucket_mb * 2**20))
