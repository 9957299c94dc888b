"""The advantage stage on data-parallel ranks: gather the batch, compute, keep the local slice.

Every rank all-gathers the shards (rewards, group ids and, when given, response masks)
in rank order, runs `compute_advantages` on the concatenation and returns its own rows.
Because every rank then evaluates the very same tensors with the same deterministic CPU
kernels, the result equals the single-process computation on the concatenated batch
bit for bit, for any sharding, including groups that straddle ranks.

Shards may differ in size (rows) and in response width (mask columns): they are padded
to the largest shard for the collective and trimmed afterwards; masks are zero-padded to
the widest shard, which is also how the single-process reference must lay them out.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from gdpo_megatron.config.algorithm import AlgorithmConfig

from .advantages import AdvantageResult, compute_advantages


def _collective_device(group: Optional[dist.ProcessGroup]) -> torch.device:
    """NCCL moves only CUDA tensors; gloo moves CPU tensors. The math itself always runs on the CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_gather_rows(local: Tensor, sizes: list[int], group: Optional[dist.ProcessGroup], pad: float) -> Tensor:
    """Concatenate every rank's `local` [n_r, ...] in rank order (shards of different n_r), on the CPU."""
    device = _collective_device(group)
    longest = max(sizes)
    padded = torch.full((longest, *local.shape[1:]), pad, dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    buffers = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(buffers, padded, group=group)
    return torch.cat([buf[:n] for buf, n in zip(buffers, sizes)], dim=0).cpu()


def _pad_columns(mask: Tensor, width: int) -> Tensor:
    out = mask.new_zeros((mask.shape[0], width))
    out[:, : mask.shape[1]] = mask
    return out


def distributed_compute_advantages(local_rewards: Tensor, local_group_ids: Tensor, algorithm: AlgorithmConfig,
                                   group: Optional[dist.ProcessGroup] = None,
                                   local_response_mask: Optional[Tensor] = None) -> AdvantageResult:
    """`compute_advantages` over the whole data-parallel batch; returns this rank's rows.

    The diagnostics (and gpg_alpha) describe the global batch and are identical on all ranks.
    Shards travel on the group's device (CPU for gloo, the current GPU for NCCL); the
    computation and the returned tensors are on the CPU, the caller moves them on.
    """
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if local_rewards.dim() != 2:
        raise ValueError(f"local_rewards must be [n, K], got shape {tuple(local_rewards.shape)}")
    has_mask = local_response_mask is not None
    width = int(local_response_mask.shape[1]) if has_mask else 0
    shape = torch.tensor([local_rewards.shape[0], local_rewards.shape[1], width, int(has_mask)], dtype=torch.int64,
                         device=_collective_device(group))
    shapes = [torch.empty_like(shape) for _ in range(world)]
    dist.all_gather(shapes, shape, group=group)
    shapes_list = [s.cpu().tolist() for s in shapes]
    if len({s[1] for s in shapes_list}) != 1:
        raise ValueError(f"ranks disagree on the number of rewards K: {[s[1] for s in shapes_list]}")
    if len({s[3] for s in shapes_list}) != 1:
        raise ValueError("some ranks passed a response mask and others did not: pass it on all or none")
    sizes = [s[0] for s in shapes_list]

    rewards = _all_gather_rows(local_rewards.detach().cpu(), sizes, group, float("nan"))
    group_ids = _all_gather_rows(local_group_ids.detach().cpu().to(torch.int64), sizes, group, 0)
    mask = None
    if has_mask:
        widest = max(s[2] for s in shapes_list)
        local_mask = _pad_columns(local_response_mask.detach().cpu().to(torch.float32), widest)
        mask = _all_gather_rows(local_mask, sizes, group, 0.0)

    result = compute_advantages(rewards, group_ids, algorithm, mask)
    start = sum(sizes[:rank])
    stop = start + sizes[rank]
    token_advantages = None
    if result.token_advantages is not None:
        token_advantages = result.token_advantages[start:stop, :width].clone()
    return AdvantageResult(advantages=result.advantages[start:stop].clone(), token_advantages=token_advantages,
                           gpg_alpha=result.gpg_alpha, diagnostics=result.diagnostics)
