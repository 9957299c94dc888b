"""The group filter stage (GFPO): keep the best k of each prompt's G' rollouts, drop the rest.

Runs between the rewards and the advantage stage, on the whole step's batch:

1. a registered metric scores every rollout (higher = kept first): `length` prefers the
   shortest response, `token_efficiency` the highest combined reward per response token;
2. k per group is fixed (`retain`) or, adaptive, chosen from the group's mean combined
   reward bucketed by running quantiles (`DifficultyTracker`, part of the run state);
3. each group keeps its k best-scored rollouts (all of them if it has fewer than k).

Ties (equal scores, incl. rollouts without a score) go to the EARLIER row of the batch, so
the decision is a pure function of the batch and its order. Rejected rollouts leave the
batch before any training compute: the advantage stage then normalizes over the retained
rollouts only, for every estimator, which is the same as GFPO's zero advantage for the
rejected ones. Vectorized: sorts and the per-group helpers of `segments.py`, no loop
over groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from gdpo_megatron.config.algorithm import AlgorithmConfig
from gdpo_megatron.config.group_filter import AdaptiveRetainConfig
from gdpo_megatron.registry import Registry

from .advantages import apply_reward_conditions, reward_names
from .segments import GroupIndex, group_stats, index_groups


@dataclass(frozen=True)
class FilterInputs:
    """What a filter metric may look at, all float64 on the CPU."""

    rewards: Tensor  # [N, K] conditioned rewards (GDPO Eq. 8 applied), NaN = missing
    lengths: Tensor  # [N] response tokens
    efficiency_weights: Tensor  # [K] weights of the token-efficiency numerator (0 = reward not counted)


FilterMetricFn = Callable[[FilterInputs], Tensor]  # -> [N] float64 score; higher is kept first, NaN last

FILTER_METRICS: Registry[FilterMetricFn] = Registry("group filter metric")


@FILTER_METRICS.register("length")
def shortest(inputs: FilterInputs) -> Tensor:
    """The shortest responses first (GFPO's "Shortest k/G")."""
    return -inputs.lengths


@FILTER_METRICS.register("token_efficiency")
def token_efficiency(inputs: FilterInputs) -> Tensor:
    """Combined reward per token, sum_k w_k r_k / max(length, 1); NaN where every counted reward is missing.

    An empty response counts as one token so the score stays finite.
    """
    counted = inputs.rewards[:, inputs.efficiency_weights != 0]
    numerator = weighted_reward_sum(counted, inputs.efficiency_weights[inputs.efficiency_weights != 0])
    return numerator / inputs.lengths.clamp(min=1.0)


def weighted_reward_sum(rewards: Tensor, weights: Tensor) -> Tensor:
    """[N] sum_k w_k r_k over the rewards present; NaN where all K are missing."""
    valid = ~torch.isnan(rewards)
    total = torch.where(valid, rewards, torch.zeros_like(rewards)) @ weights
    return torch.where(valid.any(dim=1), total, torch.full_like(total, float("nan")))


def top_k_in_groups(scores: Tensor, groups: GroupIndex, keep: Tensor) -> Tensor:
    """[N] bool: the keep[g] highest-scored rows of every group g; NaN scores rank last.

    Ties go to the earlier row: a stable sort by score (descending), then a stable sort
    by group, leaves each group's rows best-first and in row order among equals.
    """
    n = scores.numel()
    ordered = torch.where(torch.isnan(scores), torch.full_like(scores, float("-inf")), scores)
    by_score = torch.sort(ordered, descending=True, stable=True).indices
    by_group = torch.sort(groups.inverse[by_score], stable=True).indices
    order = by_score[by_group]
    sizes = groups.sizes
    starts = torch.cumsum(sizes, 0) - sizes
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n, dtype=torch.int64) - starts[groups.inverse[order]]
    return rank < keep[groups.inverse]


class DifficultyTracker:
    """Running statistics of prompt difficulty: the mean rewards of the last `window` groups.

    Quantiles are exact over that window (linear interpolation, `torch.quantile`); the
    window is plain floats, so the state round-trips through JSON exactly and a resumed
    run buckets exactly as the uninterrupted one.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.history: list[float] = []

    def update(self, group_means: Tensor) -> None:
        """Append this step's finite group means (in group order) and keep the newest `window`."""
        values = group_means[torch.isfinite(group_means)].tolist()
        self.history = (self.history + values)[-self.window:]

    def edges(self, quantiles: Sequence[float]) -> Optional[Tensor]:
        """[B-1] bucket edges, or None while no group with a reward has been seen."""
        if not self.history:
            return None
        return torch.quantile(torch.tensor(self.history, dtype=torch.float64),
                              torch.tensor(list(quantiles), dtype=torch.float64))

    def state_dict(self) -> dict:
        return {"window": self.window, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        if int(state["window"]) != self.window:
            raise ValueError(f"difficulty statistics were kept over a window of {state['window']} groups, "
                             f"the recipe now says {self.window}")
        self.history = [float(v) for v in state["history"]]


def difficulty_buckets(group_means: Tensor, edges: Optional[Tensor], num_buckets: int) -> Tensor:
    """[G] bucket per group, 0 = hardest: the number of edges strictly below its mean reward.

    A mean equal to an edge falls in the harder bucket. Before any statistics exist every
    group is hardest (keeps the most); a group without any reward falls in the easiest
    bucket (it has no signal, so it should cost the least).
    """
    if edges is None:
        bucket = torch.zeros(group_means.shape, dtype=torch.int64)
    else:
        bucket = torch.searchsorted(edges.contiguous(), group_means.contiguous(), right=False)
    return torch.where(torch.isnan(group_means), torch.full_like(bucket, num_buckets - 1), bucket)


@dataclass
class FilterResult:
    keep: Tensor  # [N] bool, retained rollouts
    retained_per_group: Tensor  # [G] int64 (groups in sorted order of their ids)
    bucket: Optional[Tensor] = None  # [G] int64 difficulty bucket (adaptive only)
    edges: Optional[Tensor] = None  # bucket edges used (adaptive only)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def indices(self) -> list[int]:
        """Retained rows in batch order."""
        return self.keep.nonzero().squeeze(1).tolist()


def _efficiency_weights(algorithm: AlgorithmConfig, weights: Tensor, names: list[str]) -> Tensor:
    chosen = algorithm.group_filter.efficiency_rewards
    if not chosen:
        return weights
    return torch.where(torch.tensor([n in chosen for n in names]), weights, torch.zeros_like(weights))


def filter_groups(rewards: Tensor, group_ids: Tensor, lengths: Tensor, algorithm: AlgorithmConfig,
                  tracker: Optional[DifficultyTracker] = None) -> FilterResult:
    """Which rollouts of a step GFPO keeps. rewards [N, K] raw (NaN = missing), lengths [N] tokens.

    `tracker` (adaptive only) is updated with this step's group means BEFORE the edges are
    read, so the first step already has statistics.
    """
    config = algorithm.group_filter
    if not config.enabled:
        raise ValueError("algorithm.group_filter.metric is null: there is nothing to filter")
    if rewards.dim() != 2 or group_ids.shape != (rewards.shape[0],) or lengths.shape != (rewards.shape[0],):
        raise ValueError(f"filter_groups needs rewards [N, K], group_ids [N], lengths [N]; got "
                         f"{tuple(rewards.shape)}, {tuple(group_ids.shape)}, {tuple(lengths.shape)}")
    names = reward_names(algorithm, rewards.shape[1])
    weights = torch.tensor(algorithm.reward_weights or [1.0] * rewards.shape[1], dtype=torch.float64)
    conditioned = apply_reward_conditions(rewards.detach().cpu().to(torch.float64), algorithm.rewards)
    lengths = lengths.detach().cpu().to(torch.float64)
    groups = index_groups(group_ids.detach().cpu())
    scores = FILTER_METRICS.get(config.metric)(
        FilterInputs(conditioned, lengths, _efficiency_weights(algorithm, weights, names)))

    bucket = edges = None
    if config.adaptive is None:
        k = torch.full((groups.num_groups,), config.retain, dtype=torch.int64)
    else:
        if tracker is None:
            raise ValueError("adaptive group filter needs its DifficultyTracker (the running statistics)")
        stats = group_stats(weighted_reward_sum(conditioned, weights).unsqueeze(1), groups)
        means = torch.where(stats.count[0] >= 1, stats.mean[0], torch.full_like(stats.mean[0], float("nan")))
        tracker.update(means)
        edges = tracker.edges(config.adaptive.quantiles)
        bucket = difficulty_buckets(means, edges, len(config.adaptive.retain))
        k = torch.tensor(config.adaptive.retain, dtype=torch.int64)[bucket]
    retained = torch.minimum(k, groups.sizes)
    keep = top_k_in_groups(scores, groups, retained)
    result = FilterResult(keep, retained, bucket, edges)
    result.metrics = filter_metrics(result, conditioned, weights, lengths, names, config.adaptive, tracker)
    return result


def filter_metrics(result: FilterResult, conditioned: Tensor, weights: Tensor, lengths: Tensor, names: list[str],
                   adaptive: Optional[AdaptiveRetainConfig], tracker: Optional[DifficultyTracker]) -> dict[str, float]:
    """Per-step `gfpo/*` keys (docs/advantages.md). The all-rollout counterparts are the
    trainer's `reward/<name>/mean`, `reward/combined/mean` and `response_len/mean`."""
    keep = result.keep
    n = keep.numel()
    out = {"gfpo/retained_frac": float(keep.double().sum() / n) if n else 0.0,
           "gfpo/response_len/retained_mean": float(lengths[keep].mean()) if bool(keep.any()) else 0.0}
    kept = conditioned[keep]
    for j, name in enumerate(names):
        present = kept[:, j][~torch.isnan(kept[:, j])]
        out[f"gfpo/reward/{name}/retained_mean"] = float(present.mean()) if present.numel() else float("nan")
    combined = torch.nan_to_num(kept, nan=0.0) @ weights  # missing counts 0, as in reward/combined/mean
    out["gfpo/reward/combined/retained_mean"] = float(combined.mean()) if combined.numel() else float("nan")
    if adaptive is not None:
        num_buckets = len(adaptive.retain)
        groups_per_bucket = torch.bincount(result.bucket, minlength=num_buckets).to(torch.float64)
        kept_per_bucket = torch.bincount(result.bucket, weights=result.retained_per_group.to(torch.float64),
                                         minlength=num_buckets)
        for b, configured in enumerate(adaptive.retain):
            groups_in = float(groups_per_bucket[b])
            out[f"gfpo/bucket{b}/groups"] = groups_in
            # the k actually kept (the configured one unless groups were smaller)
            out[f"gfpo/bucket{b}/k"] = float(kept_per_bucket[b]) / groups_in if groups_in else float(configured)
        for q, edge in zip(adaptive.quantiles, result.edges.tolist() if result.edges is not None else []):
            out[f"gfpo/difficulty/q{100 * q:g}"] = edge
        out["gfpo/difficulty/window"] = float(len(tracker.history))
    return out
