"""Train/generation mismatch: how far the engine's sampling distribution is from the policy's.

For every generated token, ratio = pi_policy(token) / pi_engine(token) = exp(policy_logp - engine_logp).
Identical weights and kernels give ratio 1; the metric is |ratio - 1| over response tokens
(the quantity importance-sampling corrections and their truncation thresholds act on).
Pure tensor code: the policy workers call it on their shard, tests call it directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

log = logging.getLogger(__name__)


def generation_mismatch(engine_logprobs: torch.Tensor, policy_logprobs: torch.Tensor,
                        mask: torch.Tensor) -> dict[str, float]:
    """Mean and max of |exp(policy - engine) - 1| over tokens where `mask` is true.

    All three tensors have the same shape (typically [rollouts, response_tokens]); padding
    positions must be masked out (their logprobs may hold anything, even -inf).
    Also reports the mean absolute log-ratio and the token count.
    """
    if engine_logprobs.shape != policy_logprobs.shape or engine_logprobs.shape != mask.shape:
        raise ValueError(f"shapes differ: engine {tuple(engine_logprobs.shape)}, policy {tuple(policy_logprobs.shape)}, "
                         f"mask {tuple(mask.shape)}")
    keep = mask.bool()
    count = int(keep.sum())
    if count == 0:
        return {"mean": 0.0, "max": 0.0, "abs_log_ratio_mean": 0.0, "tokens": 0.0}
    delta = policy_logprobs.double()[keep] - engine_logprobs.double()[keep]
    deviation = (torch.exp(delta) - 1.0).abs()
    return {
        "mean": float(deviation.mean()),
        "max": float(deviation.max()),
        "abs_log_ratio_mean": float(delta.abs().mean()),
        "tokens": float(count),
    }


def pad_logprobs(rows: list[list[float]], length: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged per-rollout logprobs -> (values [N, L], mask [N, L]) with zeros in the padding."""
    width = length if length is not None else max((len(r) for r in rows), default=0)
    values = torch.zeros(len(rows), width, dtype=torch.float64)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"rollout {i}: {len(row)} logprobs do not fit in width {width}")
        values[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
        mask[i, : len(row)] = True
    return values, mask


@dataclass(frozen=True)
class MismatchCheck:
    """When the trainer measures the mismatch, and what it does when the mean is above `warn_above`.

    `every_steps == 0` disables it. The policy ranks compute `generation_mismatch` on their
    shards; `judge` looks at the step's merged metrics.
    """

    every_steps: int = 1
    warn_above: float = 0.05
    one_update_behind: bool = False  # trainer.overlap_generation: the rollouts come from the previous weights

    @classmethod
    def from_config(cls, config, one_update_behind: bool = False) -> "MismatchCheck":
        return cls(every_steps=config.every_steps, warn_above=config.warn_above, one_update_behind=one_update_behind)

    def due(self, completed_steps: int) -> bool:
        """Whether the step after `completed_steps` updates measures the mismatch (the first step always does)."""
        return self.every_steps > 0 and completed_steps % self.every_steps == 0

    def judge(self, step: int, metrics: dict[str, float], warn: Callable[[str], None] = log.warning) -> dict[str, float]:
        """`mismatch/above_warn` (1 or 0) for a step whose metrics hold `mismatch/mean`; warns when it is 1."""
        if "mismatch/mean" not in metrics:
            return {}
        mean, worst = metrics["mismatch/mean"], metrics.get("mismatch/max", float("nan"))
        above = mean > self.warn_above
        if above:
            warn(f"[warning] step {step}: train/generation mismatch mean |exp(dlogp)-1| = {mean:.4g} "
                 f"(max {worst:.4g}) is above generation.mismatch_check.warn_above={self.warn_above}: "
                 + ("with trainer.overlap_generation the rollouts come from the weights one update older, so this "
                    "includes the last update's change of the policy (a large one: consider a lower learning rate)"
                    if self.one_update_behind else
                    "the engine may hold stale weights or compute in another precision than the policy"))
        return {"mismatch/above_warn": 1.0 if above else 0.0}
