"""The `generation` section: rollout backend, engines, sampling and weight refit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .errors import ConfigError
from .schema import Section, option

# Why `refit.transport: collective` cannot feed colocated GPU engines: the exporting policy rank
# and the engine worker colocated with it would be two NCCL ranks of one group on one GPU.
COLOCATED_COLLECTIVE = ("collective cannot reach colocated GPU engines (NCCL refuses two ranks of one group on "
                        "one GPU); use cuda_ipc, auto or object_store")


@dataclass
class SamplingConfig(Section):
    """Sampling settings for training rollouts."""

    temperature: float = option(1.0, ge=0, doc="softmax temperature (0 = greedy)")
    top_p: float = option(1.0, gt=0, le=1, doc="nucleus sampling mass")
    top_k: int = option(-1, ge=-1, doc="top-k sampling (-1 disables)")
    max_new_tokens: int = option(1024, ge=1, doc="longest response")
    min_new_tokens: int = option(0, ge=0, doc="shortest response: EOS, stop ids and stop strings cannot end it earlier "
                                              "(vLLM backend; for fixed-length benchmarks: it changes the sampling "
                                              "distribution, which the policy's logprobs do not model)")
    stop: list[str] = option(default_factory=list, doc="stop strings")
    stop_token_ids: list[int] = option(default_factory=list, doc="extra stop token ids (the tokenizer's EOS always stops)")
    seed: Optional[int] = option(None, doc="sampling seed (null: derived from the run seed and step)")

    def validate(self) -> None:
        if self.top_k == 0:
            raise ConfigError("top_k: 0 would allow no token; use -1 to disable top-k or a positive k")
        if any(t < 0 for t in self.stop_token_ids):
            raise ConfigError(f"stop_token_ids: token ids must be >= 0, got {self.stop_token_ids}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ConfigError(f"min_new_tokens: {self.min_new_tokens} exceeds max_new_tokens {self.max_new_tokens}")


@dataclass
class RefitConfig(Section):
    """How updated policy weights reach the engines after each optimizer step."""

    bucket_mb: float = option(256.0, gt=0, doc="size bound of one transfer bucket in MiB (peak extra memory per engine)")
    transport: Literal["auto", "collective", "cuda_ipc", "object_store"] = option(
        "auto", doc="auto: cuda_ipc when colocated on GPUs, collective when separate (CPU hosts too), "
                    "object_store for the megatron backend; collective: broadcast over a gloo (CPU) / NCCL (GPU) group of the exporting rank and "
                    "every engine worker; cuda_ipc: GPU buffers shared with the colocated engine; object_store: "
                    "buckets through Ray's object store")


@dataclass
class MismatchCheckConfig(Section):
    """Train/generation mismatch: recompute rollout logprobs with the policy and compare."""

    every_steps: int = option(1, ge=0, doc="compute mean/max |exp(dlogp)-1| every N steps (0: never)")
    warn_above: float = option(0.05, gt=0, doc="log a warning when the mean mismatch exceeds this")


@dataclass
class GenerationConfig(Section):
    """Which engines produce rollouts and where they run."""

    backend: Literal["vllm", "megatron"] = option("vllm", doc="vllm (default) or megatron-core's inference engine")
    num_engines: int = option(1, ge=1, doc="number of vLLM engines; prompts are spread over them")
    tensor_parallel: int = option(1, ge=1, doc="tensor-parallel size of each engine")
    colocated: bool = option(True, doc="engines share GPUs with the policy (sleep during training); false: own GPUs")
    sleep_level: Literal[1, 2] = option(
        1, doc="colocated engines' vLLM sleep level while the policy trains: 1 offloads weights to host RAM and "
               "drops the KV cache, 2 drops both (the refit after waking rewrites every weight)")
    gpu_memory_utilization: float = option(0.5, gt=0, le=1, doc="fraction of device memory an engine may use (GPU)")
    cpu_kv_cache_mb: int = option(256, ge=1, doc="KV-cache size of a vLLM CPU engine in MiB (CPU hosts only)")
    max_model_len: Optional[int] = option(None, ge=1, doc="longest prompt + response an engine accepts (null: model's)")
    max_num_seqs: int = option(256, ge=1, doc="sequences an engine batches at once")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto", doc="engine weight dtype (auto: the checkpoint's; float32 on CPU hosts)")
    enforce_eager: bool = option(False, doc="disable CUDA graphs (always eager on CPU)")
    logprobs: Literal["processed", "raw"] = option(
        "processed", doc="rollout logprobs after temperature/top-k/top-p (processed) or of the raw model (raw)")
    sampling: SamplingConfig = option(default_factory=SamplingConfig, doc="sampling settings")
    refit: RefitConfig = option(default_factory=RefitConfig, doc="weight transfer to the engines")
    mismatch_check: MismatchCheckConfig = option(default_factory=MismatchCheckConfig, doc="train/generation mismatch metric")

    def validate(self) -> None:
        if self.backend == "megatron" and self.sampling.min_new_tokens:
            raise ConfigError("sampling.min_new_tokens: the megatron backend cannot hold back EOS; use the vllm "
                              "backend or leave it at 0")
        if self.backend == "megatron" and self.num_engines != 1:
            raise ConfigError("num_engines: the megatron backend runs inside the policy workers; leave it at 1")
        if self.refit.transport == "cuda_ipc" and not self.colocated:
            raise ConfigError("refit.transport: cuda_ipc needs colocated engines (same GPUs); use collective or auto")
        if self.refit.transport in ("collective", "cuda_ipc") and self.backend != "vllm":
            raise ConfigError(f"refit.transport: {self.refit.transport} feeds vLLM engines; the {self.backend} "
                              "backend refits through object_store (or auto)")
