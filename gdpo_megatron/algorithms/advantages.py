"""The advantage stage: per-rollout rewards [N, K] -> advantages [N] (+ per token), diagnostics.

Pipeline (docs/advantages.md has the formulas and the preset table):

1. `apply_reward_conditions`: GDPO Eq. 8 gates, on the raw reward values.
2. the estimator (a registry; one decorated function each) turns rewards into per-rollout
   scores with per-group statistics (`segments.py`: vectorized, NaN-aware, no loop over groups).
3. optional normalization over the whole batch (per sample or per token).
4. rollouts without any reward get exactly 0; nothing NaN or infinite leaves the stage.

All arithmetic runs in float64 (the group sums of 2^20 rollouts keep their digits) and the
result is cast to float32 once at the end. The numeric settings come from
`resolve_numerics(algorithm)`: null config fields take the preset's values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec
from gdpo_megatron.registry import Registry

from .segments import (GroupIndex, column_stats, group_std, index_groups, leave_one_out_centered,
                       leave_one_out_std, segment_sum)

RESOLUTION_DECIMALS = 6  # advantages equal to 1e-6 count as one value in `adv/resolution_mean`


# ----------------------------------------------------------------------------- numerics

@dataclass(frozen=True)
class AdvantageNumerics:
    """Concrete numeric settings of one run (what `resolve_numerics` returns; log it)."""

    estimator: str
    preset: str
    group_baseline: str  # mean | leave_one_out
    group_std: str  # unbiased | biased | leave_one_out | none
    group_eps: float
    eps_mode: str  # add | where_positive
    singleton_group: str  # zero | raw
    batch_norm: str  # none | sample | token
    batch_eps: float
    batch_eps_mode: str  # add | where_positive | inside_sqrt

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# The shipped GDPO configurations of the reference implementations (TRL 1.16
# `multi_objective_aggregation="normalize_then_sum"`, verl 0.9.1 `adv_estimator=gdpo`,
# NeMo-RL's GDPO recipes, which set `use_leave_one_out_baseline: false`; NeMo-RL's
# leave-one-out variant is `group_baseline: leave_one_out` + `group_std: leave_one_out`).
# `batch_norm` is the GDPO step 3; estimators other than gdpo skip it unless the config
# sets it explicitly. tests/unit/test_presets_vs_references.py checks each against the
# reference's formulas.
PRESETS: dict[str, dict[str, object]] = {
    "trl": dict(group_baseline="mean", group_std="unbiased", group_eps=1e-4, eps_mode="add",
                singleton_group="zero", batch_norm="sample", batch_eps=1e-4, batch_eps_mode="add"),
    "verl": dict(group_baseline="mean", group_std="unbiased", group_eps=1e-6, eps_mode="add",
                 singleton_group="raw", batch_norm="token", batch_eps=1e-8, batch_eps_mode="inside_sqrt"),
    "nemo_rl": dict(group_baseline="mean", group_std="unbiased", group_eps=1e-6,
                    eps_mode="where_positive", singleton_group="zero", batch_norm="sample", batch_eps=0.0,
                    batch_eps_mode="where_positive"),
}


# ----------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class GroupScores:
    """What an estimator returns: one score per rollout before batch normalization."""

    scores: Tensor  # [N] float64, finite
    gpg_alpha: Optional[float] = None


EstimatorFn = Callable[[Tensor, GroupIndex, Tensor, AdvantageNumerics], GroupScores]


@dataclass(frozen=True)
class Estimator:
    name: str
    compute: EstimatorFn  # (rewards [N,K] float64 NaN-missing, groups, weights [K], numerics)
    fixed: dict[str, object] = field(default_factory=dict)  # numerics this estimator always uses
    batch_norm_by_default: bool = False


ESTIMATORS: Registry[Estimator] = Registry("advantage estimator")


def estimator(name: str, *, fixed: Optional[dict[str, object]] = None,
              batch_norm_by_default: bool = False) -> Callable[[EstimatorFn], EstimatorFn]:
    """Register `fn(rewards, groups, weights, numerics) -> GroupScores` under `name`."""

    def decorator(fn: EstimatorFn) -> EstimatorFn:
        ESTIMATORS.register(name)(Estimator(name, fn, dict(fixed or {}), batch_norm_by_default))
        return fn

    return decorator


def resolve_numerics(algorithm: AlgorithmConfig) -> AdvantageNumerics:
    """AlgorithmConfig + preset -> concrete settings. Explicit fields win over the preset;
    the estimator's own fixed settings win over the preset (config validation rejects an
    explicit conflict)."""
    spec = ESTIMATORS.get(algorithm.estimator)
    values = dict(PRESETS[algorithm.preset])
    if not spec.batch_norm_by_default:
        values["batch_norm"] = "none"
    values.update(spec.fixed)
    for key in values:
        chosen = getattr(algorithm, key)
        if chosen is not None:
            values[key] = chosen
    return AdvantageNumerics(estimator=algorithm.estimator, preset=algorithm.preset, **values)


# ----------------------------------------------------------------------------- group normalization

def normalize_in_groups(x: Tensor, groups: GroupIndex, numerics: AdvantageNumerics) -> Tensor:
    """Each column of x [N, K] (NaN = missing) normalized within its groups; 0 where missing."""
    stats = column_stats(x, groups)
    inv = groups.inverse
    if numerics.group_baseline == "leave_one_out":
        centered = leave_one_out_centered(stats, groups)
    else:
        centered = stats.centered
    if numerics.group_std == "none":
        scale = None
    elif numerics.group_std == "leave_one_out":
        scale = leave_one_out_std(stats, groups)
    else:
        scale = group_std(stats, correction=1 if numerics.group_std == "unbiased" else 0)[inv]
    if scale is None:
        out = centered
    else:
        denominator = scale + numerics.group_eps
        # where_positive divides only where std > 0; with add and eps = 0 a zero std is left
        # undivided too (the centered value is then 0 or, leave-one-out, the plain difference).
        divide = (scale > 0) if numerics.eps_mode == "where_positive" else (denominator > 0)
        out = torch.where(divide, centered / torch.where(divide, denominator, torch.ones_like(denominator)), centered)
    singleton = stats.valid & (stats.count[inv] == 1)
    if numerics.singleton_group == "raw":
        # verl: a lone rollout gets mean 0 and std 1, i.e. its raw reward over (1 + eps).
        raw = torch.where(stats.valid, x, torch.zeros_like(x))
        lone = raw / (1.0 + numerics.group_eps) if numerics.eps_mode == "add" else raw
        out = torch.where(singleton, lone, out)
    else:
        out = torch.where(singleton, torch.zeros_like(out), out)
    return torch.where(stats.valid, out, torch.zeros_like(out))


def weighted_reward_sum(rewards: Tensor, weights: Tensor) -> Tensor:
    """[N] sum_k w_k r_k over the rewards present; NaN where all K are missing."""
    valid = ~torch.isnan(rewards)
    total = torch.where(valid, rewards, torch.zeros_like(rewards)) @ weights
    return torch.where(valid.any(dim=1), total, torch.full_like(total, float("nan")))


# ----------------------------------------------------------------------------- estimators

@estimator("gdpo", batch_norm_by_default=True)
def gdpo(rewards: Tensor, groups: GroupIndex, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """Normalize each reward within its group, then weight and sum (batch step is generic)."""
    return GroupScores(normalize_in_groups(rewards, groups, numerics) @ weights)


@estimator("grpo")
def grpo(rewards: Tensor, groups: GroupIndex, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """Weighted sum of the rewards first, then one group normalization of the total."""
    total = weighted_reward_sum(rewards, weights).unsqueeze(1)
    return GroupScores(normalize_in_groups(total, groups, numerics).squeeze(1))


@estimator("grpo_nostd", fixed={"group_std": "none"})
def grpo_nostd(rewards: Tensor, groups: GroupIndex, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """GRPO without the std division (the paper's "GRPO w/o std" baseline)."""
    return grpo(rewards, groups, weights, numerics)


@estimator("dr_grpo", fixed={"group_baseline": "mean", "group_std": "none"})
def dr_grpo(rewards: Tensor, groups: GroupIndex, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """Dr.GRPO: r - group mean (its loss-side changes live in the loss config)."""
    return grpo(rewards, groups, weights, numerics)


@estimator("rloo", fixed={"group_baseline": "leave_one_out", "group_std": "none"})
def rloo(rewards: Tensor, groups: GroupIndex, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """REINFORCE leave-one-out: r_i - mean of the other rollouts of the group."""
    return grpo(rewards, groups, weights, numerics)


@estimator("gpg", fixed={"group_baseline": "mean", "group_std": "none"})
def gpg(rewards: Tensor, groups: GroupIndex, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """GPG: r - group mean, plus the gradient correction alpha = B / (B - M).

    M counts the rollouts in groups whose (present) combined rewards are all equal: they
    contribute no gradient. When every group is degenerate alpha is 1 (there is no
    gradient to rescale).
    """
    total = weighted_reward_sum(rewards, weights).unsqueeze(1)
    stats = column_stats(total, groups)
    degenerate = int(groups.sizes[stats.constant[:, 0]].sum())
    batch = int(total.shape[0])
    alpha = batch / (batch - degenerate) if batch > degenerate else 1.0
    return GroupScores(normalize_in_groups(total, groups, numerics).squeeze(1), gpg_alpha=alpha)


# ----------------------------------------------------------------------------- conditions

def apply_reward_conditions(rewards: Tensor, specs: Sequence[RewardSpec]) -> Tensor:
    """GDPO Eq. 8: reward k keeps its value where raw[gate] >= threshold, else `otherwise`.

    Gates read the RAW (unconditioned) value of the gating reward, so the order of the
    rewards does not matter. A missing gate value makes the gated reward missing; a closed
    gate gives `otherwise` even when the gated reward itself is missing.
    """
    if not any(s.condition is not None for s in specs):
        return rewards
    names = [s.name for s in specs]
    out = rewards.clone()
    for k, spec in enumerate(specs):
        cond = spec.condition
        if cond is None:
            continue
        if cond.reward not in names:
            raise ValueError(f"reward {spec.name!r} is conditioned on {cond.reward!r}, which is not one of {names}")
        gate = rewards[:, names.index(cond.reward)]
        value = torch.where(gate >= cond.threshold, rewards[:, k], torch.full_like(gate, cond.otherwise))
        out[:, k] = torch.where(torch.isnan(gate), torch.full_like(gate, float("nan")), value)
    return out


# ----------------------------------------------------------------------------- batch normalization

def normalize_batch(scores: Tensor, row_weight: Tensor, mode: str, eps: float) -> Tensor:
    """Whiten scores [N] with statistics weighted by row_weight [N] (0 = excluded).

    row_weight is 1 per rollout for per-sample normalization and the number of response
    tokens for per-token whitening: every token of a rollout carries the same value, so
    token statistics reduce exactly to length-weighted rollout statistics.
    """
    included = row_weight > 0
    n = row_weight.sum()
    if not bool(included.any()):
        return torch.zeros_like(scores)
    lo = scores[included].min()
    hi = scores[included].max()
    mean = lo if bool(lo == hi) else (row_weight * scores).sum() / n
    centered = scores - mean
    var = (row_weight * centered * centered).sum() / (n - 1.0) if float(n) > 1.0 else scores.new_zeros(())
    if bool(lo == hi):
        var = scores.new_zeros(())
    std = var.sqrt()
    if mode == "add":
        return centered / (std + eps) if float(std) + eps > 0.0 else centered
    if mode == "where_positive":
        return centered / (std + eps) if float(std) > 0.0 else centered
    if mode == "inside_sqrt":
        return centered * torch.rsqrt(var + eps) if float(var) + eps > 0.0 else centered
    raise ValueError(f"unknown batch_eps_mode {mode!r}")


# ----------------------------------------------------------------------------- the stage

@dataclass
class AdvantageResult:
    advantages: Tensor  # [N] float32
    token_advantages: Optional[Tensor]  # [N, T] float32 (advantage on response tokens, 0 elsewhere) or None
    gpg_alpha: Optional[float]
    diagnostics: dict[str, float]


def reward_names(algorithm: AlgorithmConfig, num_rewards: int) -> list[str]:
    """The configured names, or reward_0.. when the config lists no rewards (ad-hoc use)."""
    if algorithm.rewards:
        return algorithm.reward_names
    return [f"reward_{k}" for k in range(num_rewards)]


def _check_inputs(rewards: Tensor, group_ids: Tensor, algorithm: AlgorithmConfig,
                  response_mask: Optional[Tensor], numerics: AdvantageNumerics) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [N, K], got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a float tensor (NaN = missing), got {rewards.dtype}")
    n, k = rewards.shape
    if algorithm.rewards and k != len(algorithm.rewards):
        raise ValueError(f"rewards has {k} columns but algorithm.rewards lists {len(algorithm.rewards)}: "
                         f"{', '.join(algorithm.reward_names)}")
    if group_ids.shape != (n,):
        raise ValueError(f"group_ids must be [N] = [{n}], got shape {tuple(group_ids.shape)}")
    infinite = torch.isinf(rewards)
    if bool(infinite.any()):
        row, col = (int(i) for i in infinite.nonzero()[0])
        name = reward_names(algorithm, k)[col]
        raise ValueError(f"reward {name!r} of rollout {row} is {float(rewards[row, col])}: "
                         f"rewards must be finite (use NaN for a missing value)")
    if response_mask is not None and (response_mask.dim() != 2 or response_mask.shape[0] != n):
        raise ValueError(f"response_mask must be [N, T] with N = {n}, got shape {tuple(response_mask.shape)}")
    if numerics.batch_norm == "token" and response_mask is None:
        raise ValueError(f"batch_norm=token (preset {numerics.preset!r}) whitens over response tokens and "
                         f"needs response_mask; pass it or set algorithm.batch_norm=sample")


def compute_advantages(rewards: Tensor, group_ids: Tensor, algorithm: AlgorithmConfig,
                       response_mask: Optional[Tensor] = None) -> AdvantageResult:
    """Advantages of N rollouts from their K named rewards (NaN = missing) and group ids."""
    numerics = resolve_numerics(algorithm)
    _check_inputs(rewards, group_ids, algorithm, response_mask, numerics)
    names = reward_names(algorithm, rewards.shape[1])
    weights = torch.tensor(algorithm.reward_weights or [1.0] * rewards.shape[1], dtype=torch.float64)
    raw = rewards.detach().to(device="cpu", dtype=torch.float64)
    conditioned = apply_reward_conditions(raw, algorithm.rewards)
    groups = index_groups(group_ids.detach().cpu())

    group_scores = ESTIMATORS.get(numerics.estimator).compute(conditioned, groups, weights, numerics)
    has_reward = (~torch.isnan(conditioned)).any(dim=1)
    scores = torch.where(has_reward, group_scores.scores, torch.zeros_like(group_scores.scores))

    mask = None if response_mask is None else response_mask.detach().cpu().to(torch.float64)
    if numerics.batch_norm == "sample":
        scores = normalize_batch(scores, has_reward.to(torch.float64), numerics.batch_eps_mode, numerics.batch_eps)
    elif numerics.batch_norm == "token":
        lengths = mask.sum(dim=1) * has_reward
        scores = normalize_batch(scores, lengths, numerics.batch_eps_mode, numerics.batch_eps)
    final = torch.where(has_reward, scores, torch.zeros_like(scores))
    if not bool(torch.isfinite(final).all()):  # a bug, not a user error: fail loudly
        raise FloatingPointError(f"non-finite advantage produced with {numerics.as_dict()}")

    advantages = final.to(torch.float32)
    token_advantages = None
    if mask is not None:
        token_advantages = advantages.unsqueeze(1) * mask.to(torch.float32)
    diagnostics = advantage_diagnostics(raw, conditioned, groups, final, has_reward, algorithm.rewards, names)
    if group_scores.gpg_alpha is not None:
        diagnostics["adv/gpg_alpha"] = group_scores.gpg_alpha
    return AdvantageResult(advantages, token_advantages, group_scores.gpg_alpha, diagnostics)


# ----------------------------------------------------------------------------- diagnostics

def distinct_per_group(values: Tensor, groups: GroupIndex, decimals: int = RESOLUTION_DECIMALS) -> Tensor:
    """[G] number of distinct values (rounded to `decimals`) among each group's rows."""
    quantized = torch.round(values * 10.0 ** decimals).to(torch.int64)
    distinct_values, value_id = torch.unique(quantized, return_inverse=True)
    # one int64 key per (group, value) pair: 1-D unique is far faster than unique(dim=0)
    width = max(int(distinct_values.numel()), 1)
    pairs = torch.unique(groups.inverse * width + value_id)
    return torch.bincount(pairs // width, minlength=groups.num_groups)


def _nan_std(values: Tensor) -> float:
    present = values[~torch.isnan(values)]
    if present.numel() < 2 or bool(present.min() == present.max()):
        return 0.0
    return float(present.std())


def advantage_diagnostics(raw: Tensor, conditioned: Tensor, groups: GroupIndex, final: Tensor,
                          has_reward: Tensor, specs: Sequence[RewardSpec], names: list[str]) -> dict[str, float]:
    """Flat, log-ready statistics of one batch (keys in docs/observability.md; reward means are the trainer's)."""
    out: dict[str, float] = {}
    stats = column_stats(conditioned, groups)
    with_values = stats.count >= 1
    for k, name in enumerate(names):
        column = conditioned[:, k]
        out[f"reward/{name}/std"] = _nan_std(column)
        out[f"reward/{name}/missing_frac"] = float(torch.isnan(column).double().mean()) if column.numel() else 0.0
        groups_with = with_values[:, k]
        out[f"reward/{name}/zero_var_group_frac"] = (
            float((stats.constant[:, k] & groups_with).double().sum() / groups_with.double().sum())
            if bool(groups_with.any()) else 0.0)
    for k, spec in enumerate(specs):
        if spec.condition is not None:
            gate = raw[:, names.index(spec.condition.reward)]
            known = gate[~torch.isnan(gate)]
            out[f"reward/{spec.name}/gate_open_frac"] = (
                float((known >= spec.condition.threshold).double().mean()) if known.numel() else 0.0)
    n = final.numel()
    out["adv/mean"] = float(final.mean()) if n else 0.0
    out["adv/std"] = float(final.std()) if n > 1 else 0.0
    out["adv/min"] = float(final.min()) if n else 0.0
    out["adv/max"] = float(final.max()) if n else 0.0
    out["adv/zero_frac"] = float((final == 0).double().mean()) if n else 0.0
    out["adv/all_missing_frac"] = float((~has_reward).double().mean()) if n else 0.0
    out["adv/resolution_mean"] = float(distinct_per_group(final, groups).double().mean()) if n else 0.0
    out["groups/count"] = float(groups.num_groups)
    out["groups/size_mean"] = float(n / groups.num_groups) if groups.num_groups else 0.0
    return out
