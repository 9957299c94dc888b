"""The advantage stage: per-rollout rewards [N, K] -> advantages [N] (+ per token), diagnostics.

Pipeline (docs/advantages.md has the formulas and the preset table):

1. `apply_reward_conditions`: GDPO Eq. 8 gates, on the raw reward values.
2. the estimator (a registry; one decorated function each) turns rewards into per-rollout
   scores with per-group statistics (`segments.py`: vectorized, NaN-aware, no loop over
   groups). The statistics of the conditioned rewards are computed once and shared by the
   estimator and the diagnostics.
3. optional normalization over the whole batch (per sample or per token).
4. rollouts without any reward get exactly 0; nothing NaN or infinite leaves the stage.

All arithmetic runs in float64 (the group sums of 2^20 rollouts keep their digits) and the
result is cast to float32 once at the end. The numeric settings come from
`resolve_numerics(algorithm)`: null config fields take the preset's values.
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec
from gdpo_megatron.registry import Registry

from .segments import GroupStats, column_stats, group_stats, index_groups, leave_one_out_centered, leave_one_out_std

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

@dataclass
class GroupScores:
    """What an estimator returns: one score per rollout before batch normalization."""

    scores: Tensor  # [N] float64, finite, layout order of the statistics' groups; a fresh buffer
    # that the stage normalizes in place
    gpg_alpha: Optional[float] = None


EstimatorFn = Callable[[GroupStats, Tensor, AdvantageNumerics], GroupScores]


@dataclass(frozen=True)
class Estimator:
    name: str
    compute: EstimatorFn  # (stats of the rewards [N,K] float64 NaN-missing, weights [K], numerics)
    fixed: dict[str, object] = field(default_factory=dict)  # numerics this estimator always uses
    batch_norm_by_default: bool = False


ESTIMATORS: Registry[Estimator] = Registry("advantage estimator")


def estimator(name: str, *, fixed: Optional[dict[str, object]] = None,
              batch_norm_by_default: bool = False) -> Callable[[EstimatorFn], EstimatorFn]:
    """Register `fn(reward_stats, weights, numerics) -> GroupScores` under `name`."""

    def decorator(fn: EstimatorFn) -> EstimatorFn:
        ESTIMATORS.register(name)(Estimator(name, fn, dict(fixed or {}), batch_norm_by_default))
        return fn

    return decorator


_NUMERIC_FIELDS = ("group_baseline", "group_std", "group_eps", "eps_mode", "singleton_group", "batch_norm",
                   "batch_eps", "batch_eps_mode")
_numeric_fields = operator.attrgetter(*_NUMERIC_FIELDS)


def resolve_numerics(algorithm: AlgorithmConfig) -> AdvantageNumerics:
    """AlgorithmConfig + preset -> concrete settings. Explicit fields win over the preset;
    the estimator's own fixed settings win over the preset (config validation rejects an
    explicit conflict)."""
    return _resolve(algorithm.estimator, algorithm.preset, _numeric_fields(algorithm))


@functools.lru_cache(maxsize=256)
def _resolve(estimator_name: str, preset: str, explicit: tuple[object, ...]) -> AdvantageNumerics:
    # cached: the stage resolves the same section on every call
    spec = ESTIMATORS.get(estimator_name)
    values = dict(PRESETS[preset])
    if not spec.batch_norm_by_default:
        values["batch_norm"] = "none"
    values.update(spec.fixed)
    for key, chosen in zip(_NUMERIC_FIELDS, explicit):
        if chosen is not None:
            values[key] = chosen
    return AdvantageNumerics(estimator=estimator_name, preset=preset, **values)


# ----------------------------------------------------------------------------- group normalization

def _reciprocal_scale(scale: np.ndarray, numerics: AdvantageNumerics,
                      numerator: Union[float, np.ndarray] = 1.0) -> np.ndarray:
    """numerator / (scale + eps) where the division happens, else the numerator (a fresh array)."""
    denominator = scale + numerics.group_eps
    if numerics.eps_mode == "add" and numerics.group_eps > 0:  # the denominator is positive everywhere
        return np.divide(numerator, denominator, out=denominator)
    # where_positive divides only where std > 0; with add and eps = 0 a zero std is left
    # undivided too (the centered value is then 0 or, leave-one-out, the plain difference).
    divide = (scale > 0) if numerics.eps_mode == "where_positive" else (denominator > 0)
    return np.divide(numerator, np.where(divide, denominator, 1.0))


def _group_factor(stats: GroupStats, numerics: AdvantageNumerics,
                  numerator: Union[float, np.ndarray] = 1.0) -> Optional[np.ndarray]:
    """[K, G] numerator / (std + eps) of the per-group numerics (a fresh array); None without a
    std division."""
    if numerics.group_std == "none":
        return None
    scale = stats.std_array(correction=1 if numerics.group_std == "unbiased" else 0)
    return _reciprocal_scale(scale, numerics, numerator)


def _centered_and_factor(stats: GroupStats, numerics: AdvantageNumerics) -> tuple[Tensor, Optional[Tensor], bool]:
    """(centered, factor, per_group): the normalized values are centered * factor (no
    factor: centered itself); factor is [K, G] when per_group, else rows-shaped."""
    if numerics.group_baseline == "leave_one_out":
        centered = leave_one_out_centered(stats)
    else:
        centered = stats.centered
    if numerics.group_std == "leave_one_out":  # rows-shaped
        return centered, torch.from_numpy(_reciprocal_scale(leave_one_out_std(stats).numpy(), numerics)), False
    factor = _group_factor(stats, numerics)
    return centered, None if factor is None else torch.from_numpy(factor), True


def _lone_rollouts(stats: GroupStats, numerics: AdvantageNumerics) -> Optional[Tensor]:
    """[K, G] groups whose lone value is kept raw (verl), or None when there are none."""
    if numerics.singleton_group != "raw":
        return None
    single = stats.count == 1
    return single if bool(single.any()) else None


def _with_lone_rollouts(out: Tensor, stats: GroupStats, numerics: AdvantageNumerics, single: Tensor,
                        column_weight: Optional[Tensor]) -> Tensor:
    # verl: a lone rollout gets mean 0 and std 1, i.e. its raw reward over (1 + eps).
    raw = torch.where(stats.valid, stats.values, 0.0)
    lone = raw / (1.0 + numerics.group_eps) if numerics.eps_mode == "add" else raw
    if column_weight is not None:
        lone = lone * column_weight
    return torch.where(stats.groups.per_row(single) & stats.valid, lone, out)


def normalize_in_groups(stats: GroupStats, numerics: AdvantageNumerics, weights: Optional[Tensor] = None) -> Tensor:
    """Each column normalized within its groups (times weights[k] when given); 0 where missing.

    Rows-shaped like `stats.centered`. No final masking is needed: centered values are
    exactly 0 where missing and in constant groups (so a singleton group is 0 too), and
    scaling 0 keeps it 0. The division is one reciprocal per group (times the reward's
    weight) and one multiplication per value.
    """
    centered, factor, per_group = _centered_and_factor(stats, numerics)
    column_weight = None if weights is None else weights.view(-1, *([1] * (centered.dim() - 1)))
    if factor is None:
        out = centered if weights is None else centered * column_weight
    else:
        if weights is not None:
            factor = factor * (weights.unsqueeze(1) if per_group else column_weight)
        out = centered * (stats.groups.per_row(factor) if per_group else factor)
    single = _lone_rollouts(stats, numerics)
    return out if single is None else _with_lone_rollouts(out, stats, numerics, single, column_weight)


def weighted_normalized_sum(stats: GroupStats, numerics: AdvantageNumerics, weights: Tensor) -> Tensor:
    """[N] (layout order) sum_k w_k * normalized_k: `normalize_in_groups(...).sum(0)`, but
    with per-group scaling the weight folds into the per-group factor and one contraction
    over the rewards produces the sum without materializing the scaled [K, N] columns."""
    if numerics.group_baseline == "leave_one_out" or _lone_rollouts(stats, numerics) is not None:
        return stats.groups.flat(normalize_in_groups(stats, numerics, weights)).sum(0)
    groups = stats.groups
    column_weight = weights.numpy()[:, None]
    factor = _group_factor(stats, numerics, column_weight)  # w_k / (std + eps)
    if factor is None:
        factor = np.repeat(column_weight, groups.num_groups, axis=1)
    centered = stats.arrays.centered
    if groups.size is not None:
        return torch.from_numpy(np.einsum("kgs,kg->gs", centered, factor).reshape(-1))
    return torch.from_numpy(np.einsum("kn,kn->n", centered, factor[:, groups.layout_inverse.numpy()]))


def _weighted_sum(columns: Tensor, weights: Tensor) -> Tensor:
    """[K, N] x [K] -> [N]: sum_k w_k c_k (a reduction, not a BLAS gemv: that is far slower
    for a short, wide matrix)."""
    return (columns * weights.unsqueeze(1)).sum(0)


def _total_stats(stats: GroupStats, weights: Tensor) -> GroupStats:
    """Statistics of the weighted sum of the rewards present (missing where all K are), one column."""
    groups = stats.groups
    if not stats.any_missing:
        total = _weighted_sum(groups.flat(stats.values), weights)
    else:
        valid = groups.flat(stats.valid)
        total = _weighted_sum(groups.flat(torch.where(stats.valid, stats.values, 0.0)), weights)
        total = torch.where(valid.any(dim=0), total, float("nan"))
    return column_stats(groups.shaped(total.unsqueeze(0)), groups)


# ----------------------------------------------------------------------------- estimators

@estimator("gdpo", batch_norm_by_default=True)
def gdpo(stats: GroupStats, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """Normalize each reward within its group, then weight and sum (batch step is generic)."""
    return GroupScores(weighted_normalized_sum(stats, numerics, weights))


@estimator("grpo")
def grpo(stats: GroupStats, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """Weighted sum of the rewards first, then one group normalization of the total."""
    total = _total_stats(stats, weights)
    return GroupScores(stats.groups.flat(normalize_in_groups(total, numerics))[0])


@estimator("grpo_nostd", fixed={"group_std": "none"})
def grpo_nostd(stats: GroupStats, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """GRPO without the std division (the paper's "GRPO w/o std" baseline)."""
    return grpo(stats, weights, numerics)


@estimator("dr_grpo", fixed={"group_baseline": "mean", "group_std": "none"})
def dr_grpo(stats: GroupStats, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """Dr.GRPO: r - group mean (its loss-side changes live in the loss config)."""
    return grpo(stats, weights, numerics)


@estimator("rloo", fixed={"group_baseline": "leave_one_out", "group_std": "none"})
def rloo(stats: GroupStats, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """REINFORCE leave-one-out: r_i - mean of the other rollouts of the group."""
    return grpo(stats, weights, numerics)


@estimator("gpg", fixed={"group_baseline": "mean", "group_std": "none"})
def gpg(stats: GroupStats, weights: Tensor, numerics: AdvantageNumerics) -> GroupScores:
    """GPG: r - group mean, plus the gradient correction alpha = B / (B - M).

    M counts the rollouts in groups whose (present) combined rewards are all equal: they
    contribute no gradient. When every group is degenerate alpha is 1 (there is no
    gradient to rescale).
    """
    total = _total_stats(stats, weights)
    groups = stats.groups
    degenerate = int(groups.sizes[total.constant[0]].sum())
    batch = groups.num_rows
    alpha = batch / (batch - degenerate) if batch > degenerate else 1.0
    return GroupScores(groups.flat(normalize_in_groups(total, numerics))[0], gpg_alpha=alpha)


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

_BLAS_DOT_MAX = 8192  # longer dot products run without BLAS


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) of two [N] float64 arrays. BLAS is the cheapest call for short vectors, but
    OpenBLAS starts threads above ~10^4 elements, and on a shared machine they stall (5-8 ms
    at 2^15 instead of 10 us); einsum stays on the calling thread. Each N always takes the
    same branch, so every layout of a batch gets the same bits."""
    return float(a @ b) if a.size <= _BLAS_DOT_MAX else float(np.einsum("i,i->", a, b))


@dataclass
class ScoreSummary:
    """Extremes and moments of [N] scores, when the step that produced them knows them."""

    minimum: float
    maximum: float
    mean: float
    std: float  # unbiased


def normalize_batch(scores: Tensor, row_weight: Optional[Tensor], mode: str, eps: float) -> Tensor:
    """Whiten scores [N] in place with statistics weighted by row_weight [N] (0 = excluded; None = all 1).

    row_weight is 1 per rollout for per-sample normalization and the number of response
    tokens for per-token whitening: every token of a rollout carries the same value, so
    token statistics reduce exactly to length-weighted rollout statistics. Identical
    included scores give exactly 0 (no spread, nothing to divide). Excluded rows come
    out with arbitrary values: callers zero them.
    """
    if scores.numel() == 0:
        return scores
    whitened, _ = whiten(scores.numpy(), None if row_weight is None else row_weight.numpy(), mode, eps)
    return torch.from_numpy(whitened)


def whiten(values: np.ndarray, row_weight: Optional[np.ndarray], mode: str,
           eps: float) -> tuple[np.ndarray, Optional[ScoreSummary]]:
    """`normalize_batch` of float64 arrays (in place where it can), plus the summary of the
    result when every row counts (row_weight None).

    The result is (x - mean) * scale element by element, a non-decreasing map, so its
    extremes are those of the input mapped the same way (the same IEEE operations on
    Python floats: equal bit for bit); its mean is 0 and its std the input's times scale,
    up to rounding. The diagnostics take them from here instead of another pass."""
    if values.size == 0:
        return values, None
    if row_weight is None:
        n = float(values.size)
        lo, hi, weighted_sum = float(np.minimum.reduce(values)), float(np.maximum.reduce(values)), float(np.add.reduce(values))
    else:
        included = row_weight > 0
        lo = float(values.min(initial=math.inf, where=included))
        hi = float(values.max(initial=-math.inf, where=included))
        n, weighted_sum = float(row_weight.sum()), _dot(row_weight, values)
    if lo > hi:  # nothing included
        return np.zeros_like(values), None
    if lo == hi:
        return values - lo, ScoreSummary(0.0, 0.0, 0.0, 0.0) if row_weight is None else None
    mean = weighted_sum / n
    np.subtract(values, mean, out=values)  # the estimator's own buffer: no second [N] allocation
    var = _dot(values if row_weight is None else row_weight * values, values) / (n - 1.0) if n > 1.0 else 0.0
    std = math.sqrt(var)
    if mode == "add":
        scale = 1.0 / (std + eps) if std + eps > 0.0 else None
    elif mode == "where_positive":
        scale = 1.0 / (std + eps) if std > 0.0 else None
    elif mode == "inside_sqrt":
        scale = 1.0 / math.sqrt(var + eps) if var + eps > 0.0 else None
    else:
        raise ValueError(f"unknown batch_eps_mode {mode!r}")
    if row_weight is not None:
        summary = None
    elif scale is None:
        summary = ScoreSummary(lo - mean, hi - mean, 0.0, std)
    else:
        summary = ScoreSummary((lo - mean) * scale, (hi - mean) * scale, 0.0, std * scale)
    if scale is not None:
        np.multiply(values, scale, out=values)
    return values, summary


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
    if response_mask is not None and (response_mask.dim() != 2 or response_mask.shape[0] != n):
        raise ValueError(f"response_mask must be [N, T] with N = {n}, got shape {tuple(response_mask.shape)}")
    if numerics.batch_norm == "token" and response_mask is None:
        raise ValueError(f"batch_norm=token (preset {numerics.preset!r}) whitens over response tokens and "
                         f"needs response_mask; pass it or set algorithm.batch_norm=sample")


def _check_finite(rewards: Tensor, names: list[str]) -> None:
    infinite = torch.isinf(rewards)
    if bool(infinite.any()):
        row, col = (int(i) for i in infinite.nonzero()[0])
        raise ValueError(f"reward {names[col]!r} of rollout {row} is {float(rewards[row, col])}: "
                         f"rewards must be finite (use NaN for a missing value)")


def _cpu(x: Tensor) -> Tensor:
    """x on the CPU, out of any autograd graph (as is, when it already is: no call)."""
    return x if x.is_cpu and not x.requires_grad else x.detach().cpu()


def compute_advantages(rewards: Tensor, group_ids: Tensor, algorithm: AlgorithmConfig,
                       response_mask: Optional[Tensor] = None) -> AdvantageResult:
    """Advantages of N rollouts from their K named rewards (NaN = missing) and group ids."""
    numerics = resolve_numerics(algorithm)
    _check_inputs(rewards, group_ids, algorithm, response_mask, numerics)
    names = reward_names(algorithm, rewards.shape[1])
    weights = torch.from_numpy(np.array(algorithm.reward_weights or [1.0] * rewards.shape[1], dtype=np.float64))
    raw = _cpu(rewards)
    conditioned = raw
    if any(spec.condition is not None for spec in algorithm.rewards):
        raw = raw.to(torch.float64)  # `otherwise` values are float64 numbers
        _check_finite(raw, names)
        conditioned = apply_reward_conditions(raw, algorithm.rewards)
    groups = index_groups(_cpu(group_ids))
    stats = group_stats(conditioned, groups)
    if not stats.all_finite and not math.isfinite(stats.arrays.mean.sum()):  # NaN-aware means: an infinity
        _check_finite(raw, names)

    # everything below runs in the layout order of `groups`; the result goes back at the end
    group_scores = ESTIMATORS.get(numerics.estimator).compute(stats, weights, numerics)
    # NumPy from here: the batch step and the diagnostics are a few calls on [N] arrays
    scores = group_scores.scores.numpy()
    has_reward = None
    if stats.any_missing:
        values = stats.arrays.values
        has_reward = np.logical_or.reduce(values == values, axis=0).reshape(-1)
    num_with_reward = groups.num_rows if has_reward is None else int(np.count_nonzero(has_reward))
    all_rewarded = num_with_reward == groups.num_rows
    if not all_rewarded:
        scores = np.where(has_reward, scores, 0.0)

    mask = None if response_mask is None else _cpu(response_mask).to(torch.float64)
    summary = None
    if numerics.batch_norm == "sample":
        weight = None if all_rewarded else has_reward.astype(np.float64)
        scores, summary = whiten(scores, weight, numerics.batch_eps_mode, numerics.batch_eps)
    elif numerics.batch_norm == "token":
        lengths = groups.to_layout(mask.sum(dim=1)).numpy()
        lengths = lengths if all_rewarded else lengths * has_reward
        scores, _ = whiten(scores, lengths, numerics.batch_eps_mode, numerics.batch_eps)
    final = scores if all_rewarded else np.where(has_reward, scores, 0.0)
    diagnostics = advantage_diagnostics(raw, stats, final, num_with_reward, algorithm.rewards, names, summary)
    if not (math.isfinite(diagnostics["adv/min"]) and math.isfinite(diagnostics["adv/max"])):
        raise FloatingPointError(f"non-finite advantage produced with {numerics.as_dict()}")  # a bug: fail loudly
    if group_scores.gpg_alpha is not None:
        diagnostics["adv/gpg_alpha"] = group_scores.gpg_alpha

    advantages = groups.from_layout(torch.from_numpy(final.astype(np.float32)))
    token_advantages = None
    if mask is not None:
        token_advantages = advantages.unsqueeze(1) * mask.to(torch.float32)
    return AdvantageResult(advantages, token_advantages, group_scores.gpg_alpha, diagnostics)


# ----------------------------------------------------------------------------- diagnostics

@functools.lru_cache(maxsize=64)
def _reward_keys(names: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(f"reward/{name}/{stat}" for name in names)
                 for stat in ("std", "missing_frac", "zero_var_group_frac"))


def advantage_diagnostics(raw: Tensor, stats: GroupStats, final: Union[Tensor, np.ndarray], num_with_reward: int,
                          specs: Sequence[RewardSpec], names: list[str],
                          summary: Optional[ScoreSummary] = None) -> dict[str, float]:
    """Flat, log-ready statistics of one batch (keys in docs/advantages.md).

    Reward statistics come from the per-group statistics already computed for the
    estimator; `final` [N] float64 is in the layout order of the groups, `summary` its
    extremes and moments when the batch step knows them. The arithmetic on these small
    arrays runs in NumPy: every per-reward sum over the groups is one reduction of one
    array, the rest is arithmetic on K numbers.
    """
    groups = stats.groups
    n = groups.num_rows
    k = len(names)
    out: dict[str, float] = {}
    if n == 0:
        for name in names:
            for stat in ("std", "missing_frac", "zero_var_group_frac"):
                out[f"reward/{name}/{stat}"] = 0.0
        for key in ("mean", "std", "min", "max", "zero_frac", "all_missing_frac", "resolution_mean"):
            out[f"adv/{key}"] = 0.0
        out["groups/count"] = 0.0
        out["groups/size_mean"] = 0.0
        return out
    _, count, mean, sq_dev, _ = stats.arrays
    # pooled over the batch: the groups' squared deviations plus their count-weighted squared
    # offsets d from the pooled mean, taken around one group's mean (exact zeros when every
    # value is equal) as sum count * d^2 - (sum count * d)^2 / present
    full = stats.common_count is not None  # every group holds all its values
    if full:
        parts = np.empty((3, k, groups.num_groups))
        offset = np.subtract(mean, mean[:, :1], out=parts[0])
        np.multiply(offset, offset, out=parts[1])
        np.equal(sq_dev, 0.0, out=parts[2])  # constant groups: their deviations are exact zeros
        offsets, between, zero_var = np.add.reduce(parts, axis=-1).tolist()
        size = float(stats.common_count)
        between, offsets = [size * b for b in between], [size * o for o in offsets]
        present, groups_with_values = [float(n)] * k, [float(groups.num_groups)] * k
    else:
        parts = np.empty((5, k, groups.num_groups))
        with_values = np.greater_equal(count, 1.0, out=parts[3])
        reference = np.take_along_axis(mean, with_values.argmax(1)[:, None], 1)  # a group with values
        offset = np.subtract(mean, reference, out=parts[0])
        np.multiply(offset, offset, out=parts[1])
        np.multiply(parts[1], count, out=parts[1])  # count * d^2
        np.multiply(offset, count, out=offset)  # count * d
        np.logical_and(sq_dev == 0.0, with_values, out=parts[2])
        np.copyto(parts[4], count)
        offsets, between, zero_var, groups_with_values, present = parts.sum(-1).tolist()
    squares = stats.sq_totals
    stds = [math.sqrt((squares[col] + max(between[col] - offsets[col] * offsets[col] / max(present[col], 1.0), 0.0))
                      / (present[col] - 1.0)) if present[col] >= 2.0 else 0.0 for col in range(k)]
    std_keys, missing_keys, zero_var_keys = _reward_keys(tuple(names))
    out.update(zip(std_keys, stds))
    out.update(zip(missing_keys, [1.0 - p / n for p in present]))
    out.update(zip(zero_var_keys, [z / max(w, 1.0) for z, w in zip(zero_var, groups_with_values)]))
    for spec in specs:
        if spec.condition is not None:
            gate = raw[:, names.index(spec.condition.reward)]
            opened = float((gate >= spec.condition.threshold).sum()) / max(float((gate == gate).sum()), 1.0)
            out[f"reward/{spec.name}/gate_open_frac"] = opened
    adv = final if isinstance(final, np.ndarray) else final.numpy()
    if summary is None:
        adv_min, adv_max = float(adv.min()), float(adv.max())
        adv_mean = float(adv.sum()) / n
        # advantages are centered within their groups, so the one-pass variance loses no digits
        adv_std = math.sqrt(max(_dot(adv, adv) - n * adv_mean * adv_mean, 0.0) / (n - 1)) if n > 1 else 0.0
    else:
        adv_min, adv_max, adv_mean, adv_std = summary.minimum, summary.maximum, summary.mean, summary.std
    out.update({"adv/mean": adv_mean, "adv/std": adv_std, "adv/min": adv_min, "adv/max": adv_max,
                "adv/zero_frac": (n - int(np.count_nonzero(adv))) / n, "adv/all_missing_frac": 1.0 - num_with_reward / n})
    # advantages equal to RESOLUTION_DECIMALS decimals count as one value
    distinct = groups.count_distinct(adv, scale=10.0 ** RESOLUTION_DECIMALS)
    out["adv/resolution_mean"] = distinct / groups.num_groups
    out["groups/count"] = float(groups.num_groups)
    out["groups/size_mean"] = n / groups.num_groups
    return out
