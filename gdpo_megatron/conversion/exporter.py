"""Megatron model chunks -> a stream of (HF name, full tensor), and HF checkpoints from it.

Who yields what: EVERY rank yields EVERY tensor of the model, in the same order
(embedding, layers 0..L-1, final norm, lm_head unless tied). All ranks must iterate
the stream to the end together, because producing each tensor takes collectives:
an all-gather over the owning stage's tensor-parallel group, then (PP > 1) a broadcast
from that stage to the other stages over the pipeline group. Only one full tensor
(plus its shards) is alive at a time. Consumers pick what they need: `save_hf_checkpoint`
writes on global rank 0 only; a colocated refit on each rank loads everything.

Tensors keep the parameters' dtype and device (bf16 on GPU for a bf16 policy). FP8 parameters
(`policy.precision.fp8_params`: Transformer Engine Float8Tensors, whose storage is one byte per
element under a bf16/fp32 "fake" dtype) are dequantized to that dtype first, so consumers get
plain tensors whose bytes match their dtype (the refit buckets copy raw bytes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from gdpo_megatron.config.policy import ModelConfig, PolicyConfig
from gdpo_megatron.policy.model import resolve_model_config, unwrap, vocab_info

from . import tensor_layout as tl
from .families import FAMILIES, HFNames
from .weight_map import ParamEntry, chunk_entries


def plain_tensor(param: torch.Tensor) -> torch.Tensor:
    """The parameter's values as a plain tensor: FP8 (Transformer Engine) parameters dequantized.

    Uses megatron-core's own test and dequantization (`megatron.core.fp8_utils`), which know the
    Float8Tensor / QuantizedTensor classes of each TE version; without TE nothing is FP8.
    """
    from megatron.core.fp8_utils import dequantize_fp8_tensor, is_float8tensor

    tensor = param.detach()
    if is_float8tensor(tensor):
        tensor = dequantize_fp8_tensor(tensor)
    return tensor


def _gather_tp(tensor: torch.Tensor, group, tp_size: int) -> list[torch.Tensor]:
    if tp_size == 1:
        return [tensor]
    shards = [torch.empty_like(tensor) for _ in range(tp_size)]
    dist.all_gather(shards, tensor.contiguous(), group=group)
    return shards


def _to_hf(entry: ParamEntry, shards: list[torch.Tensor], model: ModelConfig, vocab_size: int) -> list[tuple[str, torch.Tensor]]:
    kind = entry.kind
    if kind == "replicated":
        return [(entry.hf_names[0], shards[0])]
    if kind == "row":
        return [(entry.hf_names[0], torch.cat(shards, dim=1))]
    if kind == "vocab":
        return [(entry.hf_names[0], torch.cat(shards, dim=0)[:vocab_size])]
    if kind == "qkv":
        q, k, v = tl.split_qkv(torch.cat(shards, dim=0), model.num_attention_heads, model.num_query_groups)
        return list(zip(entry.hf_names, (q, k, v)))
    if kind == "gate_up":
        return list(zip(entry.hf_names, tl.split_gate_up(shards)))
    raise ValueError(f"unknown split kind {kind!r}")


@torch.no_grad()
def export_hf_weights(model_chunks: list[torch.nn.Module], policy: PolicyConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream the model in HF names and shapes; see the module docstring for the rank contract."""
    from megatron.core import parallel_state as mpu

    model = resolve_model_config(policy)
    names: HFNames = FAMILIES.get(model.family)
    vocab_size = vocab_info(policy, model).vocab_size
    tp_group, tp_size = mpu.get_tensor_model_parallel_group(), mpu.get_tensor_model_parallel_world_size()
    pp_group, pp_size = mpu.get_pipeline_model_parallel_group(), mpu.get_pipeline_model_parallel_world_size()
    pp_rank = mpu.get_pipeline_model_parallel_rank()

    local = {e.key: e for chunk in model_chunks for e in chunk_entries(unwrap(chunk), model, names) if e.export}
    if pp_size == 1:
        owners = {key: (entry.order, 0) for key, entry in local.items()}
    else:
        # Every stage learns which stage owns which key, so all ranks walk one global order.
        per_stage: list = [None] * pp_size
        dist.all_gather_object(per_stage, [(k, e.order) for k, e in local.items()], group=pp_group)
        owners = {key: (order, stage) for stage, items in enumerate(per_stage) for key, order in items}
    pp_ranks = dist.get_process_group_ranks(pp_group) if pp_size > 1 else None

    for key, (_, owner) in sorted(owners.items(), key=lambda item: item[1][0]):
        pairs = None
        if owner == pp_rank:
            entry = local[key]
            pairs = _to_hf(entry, _gather_tp(plain_tensor(entry.param), tp_group, tp_size), model, vocab_size)
        if pp_size > 1:
            meta = [[(n, tuple(t.shape), t.dtype) for n, t in pairs] if pairs is not None else None]
            dist.broadcast_object_list(meta, src=pp_ranks[owner], group=pp_group)
            if pairs is None:
                device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
                pairs = [(n, torch.empty(shape, dtype=dtype, device=device)) for n, shape, dtype in meta[0]]
            for _, tensor in pairs:
                dist.broadcast(tensor.contiguous(), src=pp_ranks[owner], group=pp_group)
        yield from pairs


def hf_config_dict(model: ModelConfig) -> dict:
    """A config.json for a model that has no source checkpoint (explicit sizes)."""
    names = FAMILIES.get(model.family)
    scaling = model.rope_scaling
    cfg = {
        "architectures": [names.architecture],
        "model_type": names.model_type,
        "hidden_act": "silu",
        "hidden_size": model.hidden_size,
        "intermediate_size": model.ffn_hidden_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_attention_heads,
        "num_key_value_heads": model.num_query_groups,
        "head_dim": model.head_dim,
        "vocab_size": model.vocab_size,
        "max_position_embeddings": model.max_position_embeddings,
        "rms_norm_eps": model.norm_epsilon,
        "rope_theta": model.rope_theta,
        "tie_word_embeddings": model.tie_embeddings,
        "attention_bias": bool(model.qkv_bias),
        "torch_dtype": "float32",
    }
    if scaling.type != "none":
        cfg["rope_scaling"] = {"rope_type": scaling.type, "factor": scaling.factor}
        if scaling.type == "llama3":
            cfg["rope_scaling"].update(low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor,
                                       original_max_position_embeddings=scaling.original_max_position_embeddings)
    return cfg


_SOURCE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")


def save_hf_checkpoint(model_chunks: list[torch.nn.Module], policy: PolicyConfig, out_dir: str | Path, *,
                       dtype: torch.dtype | None = None, max_shard_bytes: int = 2 * 1024**3,
                       source_dir: str | Path | None = None) -> Path | None:
    """Write an HF safetensors checkpoint from the export stream; called on EVERY rank.

    Global rank 0 writes `out_dir` (shards of at most `max_shard_bytes`, an index when
    there is more than one, config.json and tokenizer files copied from `source_dir` or
    `policy.model.hf_path`, else a generated config.json); it returns the path there and
    None elsewhere.
    """
    from safetensors.torch import save_file

    model = resolve_model_config(policy)
    writer = dist.get_rank() == 0
    out = Path(out_dir)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    # Shards are flushed as they fill, so at most one shard is held in memory.
    files: list[tuple[str, list[str]]] = []

    def flush(final: bool) -> None:
        nonlocal size
        if not shards[-1]:
            return
        tmp_name = f"model-part-{len(files) + 1:05d}.safetensors"
        save_file(shards[-1], str(out / tmp_name), metadata={"format": "pt"})
        files.append((tmp_name, list(shards[-1])))
        shards[-1] = {}
        size = 0

    for name, tensor in export_hf_weights(model_chunks, policy):
        if not writer:
            continue
        tensor = tensor.detach().to("cpu", dtype=dtype or tensor.dtype).contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            flush(final=False)
        shards[-1][name] = tensor
        size += nbytes
    if not writer:
        return None
    flush(final=True)
    if len(files) == 1:
        (out / files[0][0]).rename(out / "model.safetensors")
    else:
        weight_map = {}
        for n, (tmp, tensor_names) in enumerate(files, start=1):
            final = f"model-{n:05d}-of-{len(files):05d}.safetensors"
            (out / tmp).rename(out / final)
            weight_map.update({t: final for t in tensor_names})
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))

    source = Path(source_dir or model.hf_path) if (source_dir or model.hf_path) else None
    if source is not None and (source / "config.json").is_file():
        for filename in _SOURCE_FILES:
            if (source / filename).is_file() and source.resolve() != out.resolve():
                shutil.copy2(source / filename, out / filename)
    else:
        (out / "config.json").write_text(json.dumps(hf_config_dict(model), indent=2))
    return out
