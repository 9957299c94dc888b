"""The `algorithm.group_filter` section: GFPO, train on the best k of each prompt's G' rollouts.

G' is `trainer.rollouts_per_prompt` (what the engine samples per prompt); this section says
how many of them are kept (a fixed k, or k per difficulty bucket) and by which registered
metric. See docs/advantages.md ("Group filter").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .errors import ConfigError, did_you_mean
from .schema import Section, option


@dataclass
class AdaptiveRetainConfig(Section):
    """Adaptive difficulty: k per prompt from its mean reward, bucketed by running quantiles."""

    quantiles: list[float] = option(
        default_factory=lambda: [0.25, 0.5, 0.75],
        doc="bucket edges: these quantiles of the running prompt mean rewards, strictly increasing in (0, 1)")
    retain: list[int] = option(
        default_factory=list,
        doc="k per bucket, HARDEST (lowest mean reward) first; one more entry than quantiles")
    window: int = option(
        4096, ge=1, doc="running statistics: the mean rewards of the last `window` prompt groups (checkpointed)")

    def validate(self) -> None:
        q = self.quantiles
        if not q:
            raise ConfigError("quantiles: give at least one quantile (one edge makes two buckets)")
        if any(not 0.0 < v < 1.0 for v in q) or any(b <= a for a, b in zip(q, q[1:])):
            raise ConfigError(f"quantiles: must be strictly increasing and inside (0, 1), got {q}")
        if len(self.retain) != len(q) + 1:
            raise ConfigError(f"retain: {len(q)} quantiles make {len(q) + 1} buckets, so retain needs "
                              f"{len(q) + 1} entries (hardest bucket first), got {self.retain}")
        if any(k < 1 for k in self.retain):
            raise ConfigError(f"retain: every bucket keeps at least 1 rollout, got {self.retain}")


@dataclass
class GroupFilterConfig(Section):
    """GFPO: keep the best k rollouts of each group by a metric; the others cost no training compute."""

    metric: Optional[str] = option(
        None, doc="registered filter metric: length (shortest first) or token_efficiency "
                  "(combined reward per token, highest first); null: no filtering")
    retain: Optional[int] = option(
        None, ge=1, doc="k: rollouts kept per prompt out of the trainer.rollouts_per_prompt sampled (G')")
    adaptive: Optional[AdaptiveRetainConfig] = option(
        None, doc="adaptive-difficulty k per prompt instead of a fixed retain")
    efficiency_rewards: list[str] = option(
        default_factory=list,
        doc="token_efficiency numerator: the weighted sum of these rewards (conditions applied); empty: all rewards")

    @property
    def enabled(self) -> bool:
        return self.metric is not None

    def max_retained(self, sampled: int) -> int:
        """The most rollouts one group can keep out of `sampled` (all of them when filtering is off)."""
        if not self.enabled:
            return sampled
        k = max(self.adaptive.retain) if self.adaptive is not None else self.retain
        return min(k, sampled)

    def validate(self) -> None:
        from gdpo_megatron.algorithms.group_filter import FILTER_METRICS

        if self.metric is None:
            if self.retain is not None or self.adaptive is not None:
                raise ConfigError("metric: retain/adaptive are set but metric is null; pick a metric "
                                  f"({', '.join(sorted(FILTER_METRICS))}) or remove them")
            if self.efficiency_rewards:
                raise ConfigError("efficiency_rewards: only used by metric token_efficiency")
            return
        if self.metric not in FILTER_METRICS:
            raise ConfigError(f"metric: unknown group filter metric {self.metric!r}"
                              f"{did_you_mean(self.metric, FILTER_METRICS)}; registered: {', '.join(sorted(FILTER_METRICS))}")
        if (self.retain is None) == (self.adaptive is None):
            raise ConfigError("retain: set exactly one of retain (a fixed k) and adaptive (k per difficulty bucket)")
        if self.efficiency_rewards and self.metric != "token_efficiency":
            raise ConfigError(f"efficiency_rewards: only used by metric token_efficiency, not {self.metric!r}")
