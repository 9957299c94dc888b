"""HF checkpoint -> Megatron model chunks, for any TP/PP layout, one tensor at a time."""

from __future__ import annotations

from pathlib import Path

import torch

from gdpo_megatron.config.policy import PolicyConfig
from gdpo_megatron.policy.master_weights import keep_loaded_value
from gdpo_megatron.policy.model import resolve_model_config, unwrap, vocab_info

from . import tensor_layout as tl
from .families import FAMILIES
from .hf_reader import HFCheckpointReader
from .weight_map import ParamEntry, chunk_entries


def _local_piece(entry: ParamEntry, reader: HFCheckpointReader, *, tp_size: int, tp_rank: int,
                 heads: int, groups: int, padded_vocab: int) -> torch.Tensor:
    kind = entry.kind
    if kind == "replicated":
        return reader.get(entry.hf_names[0])
    if kind == "row":
        return tl.shard(reader.get(entry.hf_names[0]), 1, tp_size, tp_rank)
    if kind == "vocab":
        return tl.shard(tl.pad_vocab(reader.get(entry.hf_names[0]), padded_vocab), 0, tp_size, tp_rank)
    if kind == "qkv":
        q, k, v = (reader.get(n) for n in entry.hf_names)
        return tl.shard(tl.fuse_qkv(q, k, v, heads, groups), 0, tp_size, tp_rank)
    if kind == "gate_up":
        gate, up = (reader.get(n) for n in entry.hf_names)
        return tl.fuse_gate_up(gate, up, tp_size, tp_rank)
    raise ValueError(f"unknown split kind {kind!r}")


@torch.no_grad()
def load_hf_weights(model_chunks: list[torch.nn.Module], hf_dir: str | Path, policy: PolicyConfig) -> None:
    """Copy an HF safetensors checkpoint into this rank's chunks (after `build_model`).

    Every rank reads only the tensors its own parameters need, one (or, for fused
    QKV / gate-up, three or two) at a time, slices its TP piece and copies it in place;
    the full model is never in memory. Every parameter must be written: a missing
    tensor or an unmapped parameter raises, naming it. Padded vocabulary rows are zero.
    """
    from megatron.core import parallel_state as mpu

    model = resolve_model_config(policy)
    names = FAMILIES.get(model.family)
    vocab = vocab_info(policy, model)
    tp_size, tp_rank = mpu.get_tensor_model_parallel_world_size(), mpu.get_tensor_model_parallel_rank()
    with HFCheckpointReader(hf_dir) as reader:
        for chunk in model_chunks:
            for entry in chunk_entries(unwrap(chunk), model, names):
                piece = _local_piece(entry, reader, tp_size=tp_size, tp_rank=tp_rank, heads=model.num_attention_heads,
                                     groups=model.num_query_groups, padded_vocab=vocab.padded_vocab_size)
                if piece.shape != entry.param.shape:
                    raise ValueError(f"{hf_dir}: {', '.join(entry.hf_names)} gives shape {tuple(piece.shape)} for "
                                     f"Megatron {entry.key} of shape {tuple(entry.param.shape)} on TP rank {tp_rank}")
                entry.param.copy_(piece.to(entry.param.dtype))
                keep_loaded_value(entry.param, piece)  # FP8 parameters: master weights = these values
