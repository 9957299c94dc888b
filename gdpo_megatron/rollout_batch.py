"""Driver-side rollout bookkeeping: what one step's rollouts are and how they are split.

The driver holds token ids and reward rows only; per-token tensors are built on the
policy ranks from these lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gdpo_megatron.partition import even_ranges


@dataclass
class RolloutShard:
    """The rollouts one data-parallel rank trains on (every TP/PP rank of it gets the same)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    rewards: torch.Tensor  # [n, K] float32, NaN = missing
    group_ids: torch.Tensor  # [n] int64, global group ids (groups may straddle shards)
    engine_logprobs: list[list[float]] = field(default_factory=list)  # sampling-policy logprobs per response token
    trainable: torch.Tensor | None = None  # [n] bool: False = out of the loss (overlong filtering); None = all in

    def __len__(self) -> int:
        return len(self.response_ids)


def shard_rollouts(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    engine_logprobs: list[list[float]],
    num_shards: int,
    trainable: torch.Tensor | None = None,
) -> list[RolloutShard]:
    """Split a step's rollouts over data-parallel ranks, keeping the global order."""
    return [
        RolloutShard(prompt_ids[a:b], response_ids[a:b], rewards[a:b], group_ids[a:b], engine_logprobs[a:b],
                     trainable[a:b] if trainable is not None else None)
        for a, b in even_ranges(len(response_ids), num_shards)
    ]


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [num_groups] over `group_ids.unique()`: True where some reward varies in the group.

    A group whose rollouts all received the same rewards (every reward column equal,
    missing values compared as equal) has zero advantage under every estimator, so it
    carries no gradient; dynamic sampling drops such groups (DAPO).
    """
    unique, inverse = torch.unique(group_ids, return_inverse=True)
    filled = torch.nan_to_num(rewards.to(torch.float64), nan=float("inf"))
    index = inverse.unsqueeze(1).expand_as(filled)
    empty = torch.zeros((len(unique), rewards.shape[1]), dtype=torch.float64)
    group_max = empty.clone().scatter_reduce_(0, index, filled, "amax", include_self=False)
    group_min = empty.clone().scatter_reduce_(0, index, filled, "amin", include_self=False)
    return (group_max != group_min).any(dim=1)
