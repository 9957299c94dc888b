"""Per-GPU memory model for Megatron training and vLLM engines. Pure arithmetic on bytes.

Training (per GPU, on the heaviest pipeline stage):
- weights: 2 bytes/param in bf16 (4 in fp32, 1 with FP8 parameters);
- gradients: 4 bytes/param, Megatron's fp32 main-grad buffer (kept whole on every DP rank
  even with the distributed optimizer, which only reduce-scatters into it);
- optimizer: Adam m and v (8 bytes) plus an fp32 master copy when weights are not fp32
  (4 bytes), divided by the data-parallel size with the distributed optimizer. This gives
  the published Megatron-LM table: bf16 params + fp32 grads = 6 + 12/d bytes/param;
- activations per micro-batch and layer, in elements per token (flash attention, so no
  s x s scores; dropout 0 as in RL fine-tuning, so no masks): the inputs of the two norms
  and of the QKV and FC1 GEMMs (4h, split over TP only with sequence parallelism), q, k, v
  and the attention output (2 q_dim + 2 kv_dim), FC1's gate+up output and the SwiGLU
  output (3 ffn), split over TP. With full recomputation only each layer's input (h) is
  kept, plus one layer's full set while it is recomputed. The first pipeline stage keeps
  `pipeline` micro-batches in flight under 1F1B (more with interleaving);
- logits on the last stage: one micro-batch's tokens x vocab/TP at 2 bytes (bf16 output)
  + 4 (fp32 log-softmax kept for backward) + 4 (its fp32 gradient);
- a fixed runtime reserve for the CUDA context, NCCL buffers and allocator fragmentation.

vLLM engine (per GPU): weights at 2 bytes/param over the engine's TP, a fixed reserve for
CUDA graphs and activations, and the KV cache filling the rest of
`gpu_memory_utilization x device memory`: 2 (K and V) x layers x KV heads per GPU x
head_dim x 2 bytes per token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Optional

from gdpo_megatron.model_catalog import ModelArch

GIB = 1024 ** 3
# CUDA context (~0.5-1 GiB), NCCL communicators and buffers (~1-2 GiB), fragmentation.
RUNTIME_RESERVE_GIB = 3.0
# vLLM's non-KV working set: CUDA graphs, sampler and activation workspace of the profile run.
ENGINE_RESERVE_GIB = 2.0
ACTIVATION_BYTES = {"bf16": 2, "fp32": 4}
LOGIT_BYTES_PER_ELEMENT = 2 + 4 + 4


@dataclass(frozen=True)
class TrainingLayout:
    """Everything besides the architecture that decides training memory on one GPU."""

    tensor: int
    pipeline: int
    data: int
    micro_batch_size: int
    seq_length: int
    num_microbatches: int
    dtype: str = "bf16"
    fp8_params: bool = False
    distributed_optimizer: bool = True
    recompute: bool = False
    sequence_parallel: bool = False
    virtual_pipeline: Optional[int] = None
    stage_layers: Optional[tuple[int, ...]] = None  # layers per pipeline stage (None: even split)

    def layers_on(self, stage: int, num_layers: int) -> int:
        if self.stage_layers is not None:
            return self.stage_layers[stage]
        return math.ceil(num_layers / self.pipeline)


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes per GPU on the heaviest stage; `stage` says which one (first or last)."""

    stage: str
    params: float
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    reserve: float

    @property
    def resident(self) -> float:
        """What stays allocated between steps (during generation, when colocated)."""
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        return self.resident + self.activations + self.logits + self.reserve

    def to_dict(self) -> dict:
        return {**asdict(self), "resident": self.resident, "total": self.total}


@dataclass(frozen=True)
class EngineMemory:
    """One vLLM engine's share of one GPU."""

    budget: float
    weights: float
    reserve: float
    kv_cache: float
    kv_bytes_per_token: float
    kv_tokens: int
    max_model_len: int
    sequences: int

    def to_dict(self) -> dict:
        return asdict(self)


def stage_params(arch: ModelArch, tensor: int, pipeline: int,
                 stage_layers: Optional[tuple[int, ...]] = None) -> tuple[float, float]:
    """Parameters per GPU on the first and on the last pipeline stage.

    Norm weights are replicated over TP in reality; dividing them too is off by <0.01%.
    A tied embedding still needs its copy on the last stage when pipeline > 1.
    """
    even = math.ceil(arch.num_layers / pipeline)
    first_layers, last_layers = (stage_layers[0], stage_layers[-1]) if stage_layers else (even, even)
    embedding = arch.embedding_params()
    output = embedding if (not arch.tie_embeddings or pipeline > 1) else 0
    final_norm = arch.hidden_size
    if pipeline == 1:
        return ((first_layers * arch.layer_params() + embedding + output + final_norm) / tensor,) * 2
    return ((first_layers * arch.layer_params() + embedding) / tensor,
            (last_layers * arch.layer_params() + output + final_norm) / tensor)


def bytes_per_param(dtype: str, fp8_params: bool, distributed_optimizer: bool, data: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes per parameter on one GPU."""
    weights = 1.0 if fp8_params else (4.0 if dtype == "fp32" else 2.0)
    gradients = 4.0
    master = 0.0 if (dtype == "fp32" and not fp8_params) else 4.0
    optimizer = 8.0 + master
    if distributed_optimizer:
        optimizer /= data
    return weights, gradients, optimizer


def layer_activation_bytes(arch: ModelArch, tokens: int, tensor: int, sequence_parallel: bool,
                           element_bytes: int) -> float:
    """Activations one layer keeps for backward, for `tokens` tokens of one micro-batch."""
    replicated = 4 * arch.hidden_size
    split = 2 * arch.query_dim + 2 * arch.kv_dim + 3 * arch.ffn_hidden_size
    replicated_share = replicated / tensor if sequence_parallel else replicated
    return element_bytes * tokens * (replicated_share + split / tensor)


def layer_input_bytes(arch: ModelArch, tokens: int, tensor: int, sequence_parallel: bool, element_bytes: int) -> float:
    """What full recomputation keeps per layer: its input."""
    return element_bytes * tokens * arch.hidden_size / (tensor if sequence_parallel else 1)


def in_flight_microbatches(layout: TrainingLayout) -> float:
    """Micro-batches whose activations the first stage holds at once under 1F1B."""
    if layout.pipeline == 1:
        return 1.0
    in_flight = float(min(layout.pipeline, layout.num_microbatches))
    if layout.virtual_pipeline and layout.virtual_pipeline > 1:
        # Interleaving warms up with more micro-batches (Narayanan et al. 2021).
        in_flight *= 1 + (layout.pipeline - 1) / (layout.pipeline * layout.virtual_pipeline)
    return in_flight


def activation_bytes(arch: ModelArch, layout: TrainingLayout, in_flight: float, stage: int = 0) -> float:
    tokens = layout.micro_batch_size * layout.seq_length
    element = ACTIVATION_BYTES.get(layout.dtype, 2)
    layers = layout.layers_on(stage, arch.num_layers)
    full = layer_activation_bytes(arch, tokens, layout.tensor, layout.sequence_parallel, element)
    if not layout.recompute:
        return full * layers * in_flight
    kept = layer_input_bytes(arch, tokens, layout.tensor, layout.sequence_parallel, element)
    return kept * layers * in_flight + full


def logits_bytes(arch: ModelArch, layout: TrainingLayout) -> float:
    tokens = layout.micro_batch_size * layout.seq_length
    return LOGIT_BYTES_PER_ELEMENT * tokens * arch.vocab_size / layout.tensor


def training_memory(arch: ModelArch, layout: TrainingLayout) -> TrainingMemory:
    """Per-GPU training memory on the heaviest of the first, a middle and the last pipeline stage."""
    first_params, last_params = stage_params(arch, layout.tensor, layout.pipeline, layout.stage_layers)
    w, g, o = bytes_per_param(layout.dtype, layout.fp8_params, layout.distributed_optimizer, layout.data)
    reserve = RUNTIME_RESERVE_GIB * GIB
    first_in_flight = in_flight_microbatches(layout)
    logits = logits_bytes(arch, layout)
    first = TrainingMemory("first", first_params, first_params * w, first_params * g, first_params * o,
                           activation_bytes(arch, layout, first_in_flight),
                           logits if layout.pipeline == 1 else 0.0, reserve)
    if layout.pipeline == 1:
        return replace(first, stage="only")
    last = TrainingMemory("last", last_params, last_params * w, last_params * g, last_params * o,
                          activation_bytes(arch, layout, 1.0, stage=-1), logits, reserve)
    candidates = [first, last]
    if layout.stage_layers is not None and layout.pipeline > 2:
        # An uneven split can make a middle stage (second one: most micro-batches in flight
        # among the middle stages) the heaviest.
        middle_params = layout.stage_layers[1] * arch.layer_params() / layout.tensor
        middle_in_flight = max(1.0, min(layout.pipeline - 1, layout.num_microbatches))
        candidates.append(TrainingMemory("middle", middle_params, middle_params * w, middle_params * g,
                                         middle_params * o, activation_bytes(arch, layout, middle_in_flight, 1),
                                         0.0, reserve))
    return max(candidates, key=lambda m: m.total)


def kv_bytes_per_token(arch: ModelArch, engine_tensor: int) -> float:
    """K and V of every layer for one token on one GPU (bf16); KV heads replicate when TP > KV heads."""
    kv_heads_per_gpu = math.ceil(arch.num_query_groups / engine_tensor)
    return 2 * arch.num_layers * kv_heads_per_gpu * arch.head_dim * 2


def engine_memory(arch: ModelArch, engine_tensor: int, device_bytes: float, utilization: float,
                  max_model_len: int) -> EngineMemory:
    budget = utilization * device_bytes
    weights = 2.0 * arch.total_params() / engine_tensor
    reserve = ENGINE_RESERVE_GIB * GIB
    kv_cache = budget - weights - reserve
    per_token = kv_bytes_per_token(arch, engine_tensor)
    kv_tokens = max(0, int(kv_cache // per_token))
    return EngineMemory(budget, weights, reserve, kv_cache, per_token, kv_tokens, max_model_len,
                        kv_tokens // max_model_len)
