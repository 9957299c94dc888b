"""Train/generation mismatch: how far the engine's sampling distribution is from the policy's.

For every generated token, ratio = pi_policy(token) / pi_engine(token) = exp(policy_logp - engine_logp).
Identical weights and kernels give ratio 1; the metric is |ratio - 1| over response tokens
(the quantity importance-sampling corrections and their truncation thresholds act on).
Pure tensor code: the policy workers call it on their shard, tests call it directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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


@dataclass
class MismatchCheck:
    """Runs `generation_mismatch` every `every_steps` steps and warns when the mean is above `warn_above`.

    `every_steps == 0` disables it. Keeps the last result so the trainer can log it.
    """

    every_steps: int = 1
    warn_above: float = 0.05
    last: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config) -> "MismatchCheck":
        return cls(every_steps=config.every_steps, warn_above=config.warn_above)

    def due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def run(self, step: int, engine_logprobs: torch.Tensor, policy_logprobs: torch.Tensor, mask: torch.Tensor,
            warn: Callable[[str], None] = log.warning) -> dict[str, float]:
        """The metrics (prefixed `mismatch/`) when due, else an empty dict."""
        if not self.due(step):
            return {}
        result = generation_mismatch(engine_logprobs, policy_logprobs, mask)
        if result["mean"] > self.warn_above:
            warn(f"step {step}: train/generation mismatch mean |exp(dlogp)-1| = {result['mean']:.4f} "
                 f"(max {result['max']:.4f}) is above {self.warn_above}: the engine may hold stale weights "
                 "or use a different precision than the policy")
        self.last = {f"mismatch/{k}": v for k, v in result.items()}
        return self.last
