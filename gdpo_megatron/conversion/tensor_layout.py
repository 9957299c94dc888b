"""Pure tensor re-arrangements between HF and Megatron layouts (no distributed state).

Megatron fuses Q, K and V into one `linear_qkv` whose rows are grouped per KV head:
for each query group g, its `heads/groups` query heads, then g's key head, then g's
value head. A tensor-parallel rank holds a contiguous run of whole groups. The SwiGLU
`linear_fc1` of one TP rank is [gate shard; up shard]. Vocabularies are padded with
zero rows to a multiple of the TP size and split evenly.
"""

from __future__ import annotations

import torch


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_groups: int) -> torch.Tensor:
    """HF q/k/v (weights [out, in] or biases [out]) -> Megatron's grouped QKV for TP=1."""
    head_dim = k.shape[0] // num_groups
    per_group = num_heads // num_groups
    rest = q.shape[1:]
    qg = q.reshape(num_groups, per_group * head_dim, *rest)
    kg = k.reshape(num_groups, head_dim, *rest)
    vg = v.reshape(num_groups, head_dim, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, *rest)


def split_qkv(qkv: torch.Tensor, num_heads: int, num_groups: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of `fuse_qkv` on the full (TP-gathered) tensor."""
    per_group = num_heads // num_groups
    head_dim = qkv.shape[0] // (num_groups * (per_group + 2))
    rest = qkv.shape[1:]
    grouped = qkv.reshape(num_groups, (per_group + 2) * head_dim, *rest)
    q, k, v = torch.split(grouped, [per_group * head_dim, head_dim, head_dim], dim=1)
    return q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)


def fuse_gate_up(gate: torch.Tensor, up: torch.Tensor, tp_size: int, tp_rank: int) -> torch.Tensor:
    """This TP rank's `linear_fc1` shard: [gate shard; up shard]."""
    return torch.cat([gate.chunk(tp_size, dim=0)[tp_rank], up.chunk(tp_size, dim=0)[tp_rank]], dim=0)


def split_gate_up(shards: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Full gate and up from the `linear_fc1` shards of all TP ranks (in rank order)."""
    halves = [s.chunk(2, dim=0) for s in shards]
    return torch.cat([h[0] for h in halves], dim=0), torch.cat([h[1] for h in halves], dim=0)


def pad_vocab(weight: torch.Tensor, padded_size: int) -> torch.Tensor:
    if weight.shape[0] == padded_size:
        return weight
    pad = weight.new_zeros(padded_size - weight.shape[0], *weight.shape[1:])
    return torch.cat([weight, pad], dim=0)


def shard(tensor: torch.Tensor, dim: int, tp_size: int, tp_rank: int) -> torch.Tensor:
    if tensor.shape[dim] % tp_size:
        raise ValueError(f"dimension {dim} of size {tensor.shape[dim]} does not split over {tp_size} TP ranks")
    return tensor.chunk(tp_size, dim=dim)[tp_rank]
