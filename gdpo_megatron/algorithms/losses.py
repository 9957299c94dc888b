"""Policy losses: the per-token policy-gradient term (a registry), KL, entropy, aggregation.

Pure torch. Every tensor is [B, T] over the same positions (the logprob of token t+1
given the prefix, aligned with the response mask); advantages may be [B] (one per
sequence) or [B, T]. The total loss of one micro-batch is

    aggregate(pg_t * alpha + kl_coef * kl_t - entropy_coef * H_t)

with the denominators of `GlobalCounts` (see aggregation.py and docs/losses.md), so the
sum over micro-batches and data-parallel ranks is the loss of the whole mini-batch.

Adding a loss is one decorated function returning `PolicyTerms`:

    @POLICY_LOSSES.register("my-loss")
    def my_loss(inputs: LossInputs, config: LossConfig) -> PolicyTerms: ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from gdpo_megatron.config.loss import LossConfig
from gdpo_megatron.registry import Registry

from .aggregation import GlobalCounts, aggregate

# Beyond exp(20) the ratio is numerically meaningless; clamping keeps one broken token
# from turning the whole step into inf (the NaN/inf guard of the train step still applies).
LOG_RATIO_LIMIT = 20.0


@dataclass
class LossInputs:
    """What the loss needs for one micro-batch; all [B, T] unless noted, float32.

    logprobs: current policy's logprob of each sampled token (carries the gradient).
    old_logprobs: logprobs of the policy that generated the rollouts (recomputed by
        `MegatronPolicy.compute_logprobs` before the first update of the step).
    advantages: [B] or [B, T].
    mask: 1.0 on response tokens that count, 0.0 on prompt and padding.
    ref_logprobs: reference policy's logprobs; needed when kl_coef > 0.
    entropy: entropy of the current policy's next-token distribution; needed when
        entropy_coef > 0 (reported as a metric whenever present).
    """

    logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    ref_logprobs: Optional[torch.Tensor] = None
    entropy: Optional[torch.Tensor] = None

    def token_advantages(self) -> torch.Tensor:
        if self.advantages.dim() == 1:
            return self.advantages.unsqueeze(-1).expand_as(self.logprobs)
        return self.advantages


@dataclass
class PolicyTerms:
    """Output of a registered loss: per-token loss and what the metrics need."""

    per_token: torch.Tensor  # [B, T] policy-gradient loss per token (masked later)
    ratio: Optional[torch.Tensor] = None  # [B, T] importance ratio that entered the loss
    clipped: Optional[torch.Tensor] = None  # [B, T] bool: the clipped branch was taken
    dual_clipped: Optional[torch.Tensor] = None  # [B, T] bool: the dual-clip bound was taken


PolicyLossFn = Callable[[LossInputs, LossConfig], PolicyTerms]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")


def _log_ratio(inputs: LossInputs) -> torch.Tensor:
    return (inputs.logprobs - inputs.old_logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)


def clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float, clip_high: float, dual_clip: Optional[float]
) -> PolicyTerms:
    """PPO's pessimistic surrogate max(-A r, -A clip(r, 1-clip_low, 1+clip_high)), optionally dual-clipped.

    Dual clip (Ye et al. 2020): for A < 0 a huge ratio makes -A r unbounded; cap it at -A c.
    """
    unclipped = -advantages * ratio
    clipped_loss = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    dual_clipped = None
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (loss > bound)
        loss = torch.where(dual_clipped, bound, loss)
    return PolicyTerms(per_token=loss, ratio=ratio, clipped=clipped, dual_clipped=dual_clipped)


@POLICY_LOSSES.register("ppo")
def ppo_loss(inputs: LossInputs, config: LossConfig) -> PolicyTerms:
    """Token-level ratio r_t = exp(logp_new - logp_old), asymmetric clip, optional dual clip."""
    ratio = torch.exp(_log_ratio(inputs))
    return clipped_surrogate(ratio, inputs.token_advantages(), config.clip_low, config.clip_high, config.dual_clip)


@POLICY_LOSSES.register("gspo")
def gspo_loss(inputs: LossInputs, config: LossConfig) -> PolicyTerms:
    """GSPO: one ratio per sequence, s_i = exp(mean over its valid tokens of (logp_new - logp_old)).

    Written in GSPO's token form s_i,t = sg(s_i) * exp(logp_t - sg(logp_t)): its value is
    s_i at every token and, under seq-mean-token-mean, its gradient is exactly that of the
    sequence-level objective, while per-token advantages remain possible.
    """
    mask = inputs.mask.to(inputs.logprobs.dtype)
    log_ratio = _log_ratio(inputs)
    seq_log_ratio = (log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    token_log_ratio = seq_log_ratio.detach().unsqueeze(-1) + inputs.logprobs - inputs.logprobs.detach()
    ratio = torch.exp(token_log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    return clipped_surrogate(ratio, inputs.token_advantages(), config.gspo_clip_low, config.gspo_clip_high, None)


@POLICY_LOSSES.register("gpg")
def gpg_loss(inputs: LossInputs, config: LossConfig) -> PolicyTerms:
    """GPG: plain policy gradient -A * logp; no ratio, no clip (the correction alpha is applied by `policy_loss`)."""
    return PolicyTerms(per_token=-inputs.token_advantages() * inputs.logprobs)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimator of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3).

    With d = logp - logp_ref: k1 = d; k2 = d^2 / 2; k3 = exp(-d) - 1 + d (>= 0, unbiased, low variance).
    """
    d = (logprobs - ref_logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        return torch.exp(-d) - 1.0 + d
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1, k2 or k3")


# Metrics come in two kinds so that micro-batches and DP ranks combine exactly:
# "sum" metrics are already divided by the global token count (summing them over all
# pieces gives the batch mean); "min"/"max" metrics are combined with min/max.
METRIC_REDUCTIONS = {"min": ("ratio_min",), "max": ("ratio_max",)}


def metric_reduction(name: str) -> str:
    for op, names in METRIC_REDUCTIONS.items():
        if name in names:
            return op
    return "sum"


def policy_loss(
    inputs: LossInputs,
    config: LossConfig,
    counts: GlobalCounts,
    gpg_alpha: Optional[float] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the mini-batch loss, and its share of the metrics.

    gpg_alpha: GPG's B / (B - M) from the advantage stage; used by the gpg loss when
    config.gpg_correction is set (1.0 when None).
    """
    mask = inputs.mask.to(inputs.logprobs.dtype)
    terms = POLICY_LOSSES.get(config.type)(inputs, config)
    pg = terms.per_token
    if config.type == "gpg" and config.gpg_correction and gpg_alpha is not None:
        pg = pg * gpg_alpha
    total = pg
    token_share = 1.0 / (counts.num_tokens if counts.num_tokens > 0 else 1.0)

    def token_mean(x: torch.Tensor) -> torch.Tensor:
        return (x.detach().to(mask.dtype) * mask).sum() * token_share

    metrics: dict[str, torch.Tensor] = {}
    pg_loss = aggregate(pg, mask, config.aggregation, counts)
    metrics["pg_loss"] = pg_loss.detach()
    if config.kl_coef > 0:
        if inputs.ref_logprobs is None:
            raise ValueError("loss.kl_coef > 0 needs ref_logprobs in the batch")
        kl = kl_penalty(inputs.logprobs, inputs.ref_logprobs, config.kl_type)
        total = total + config.kl_coef * kl
        metrics["kl_ref"] = token_mean(kl)
    if inputs.entropy is not None:
        metrics["entropy"] = token_mean(inputs.entropy)
        if config.entropy_coef > 0:
            total = total - config.entropy_coef * inputs.entropy
    elif config.entropy_coef > 0:
        raise ValueError("loss.entropy_coef > 0 needs the entropy of the current policy")
    loss = aggregate(total, mask, config.aggregation, counts)
    metrics["loss"] = loss.detach()

    log_ratio = _log_ratio(inputs).detach()
    metrics["approx_kl_old"] = token_mean(torch.exp(log_ratio) - 1.0 - log_ratio)
    ratio = terms.ratio.detach() if terms.ratio is not None else torch.exp(log_ratio)
    metrics["ratio_mean"] = token_mean(ratio)
    valid = mask > 0
    big = torch.finfo(ratio.dtype).max
    metrics["ratio_min"] = torch.where(valid, ratio, torch.full_like(ratio, big)).min()
    metrics["ratio_max"] = torch.where(valid, ratio, torch.full_like(ratio, -big)).max()
    metrics["clip_fraction"] = token_mean(terms.clipped) if terms.clipped is not None else torch.zeros(())
    if terms.dual_clipped is not None:
        metrics["dual_clip_fraction"] = token_mean(terms.dual_clipped)
    return loss, metrics
