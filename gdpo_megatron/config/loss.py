"""The `algorithm.loss` section: policy loss, clipping, KL, entropy, aggregation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .schema import Section, option

LossAggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


@dataclass
class LossConfig(Section):
    """Policy-gradient loss: surrogate, clipping, KL, entropy and how token terms are aggregated."""

    type: str = option("ppo", doc="registered policy loss: ppo (clipped surrogate), gspo (sequence ratio), gpg (plain PG)")
    clip_low: float = option(0.2, ge=0.0, doc="lower clip epsilon of the ratio (PPO/GSPO)")
    clip_high: float = option(0.2, ge=0.0, doc="upper clip epsilon; 0.28 is DAPO's clip-higher")
    dual_clip: Optional[float] = option(None, gt=1.0, doc="dual-clip constant c (> 1) bounding the loss for negative advantages")
    aggregation: LossAggregation = option("token-mean", doc="how per-token losses are reduced (normalized over the whole DP batch)")
    kl_coef: float = option(0.0, ge=0.0, doc="coefficient of the KL penalty to the reference policy (0: no reference model)")
    kl_type: Literal["k1", "k2", "k3"] = option("k3", doc="KL estimator: k1 (log ratio), k2 (mse), k3 (low variance)")
    entropy_coef: float = option(0.0, ge=0.0, doc="entropy bonus coefficient")
    gpg_correction: bool = option(True, doc="GPG: scale the loss by alpha = B / (B - M)")
    gspo_clip_low: float = option(3e-4, ge=0.0, doc="GSPO: lower clip epsilon of the sequence ratio (GSPO paper: 3e-4)")
    gspo_clip_high: float = option(4e-4, ge=0.0, doc="GSPO: upper clip epsilon of the sequence ratio (GSPO paper: 4e-4)")
    norm_length: Optional[int] = option(None, ge=1, doc="seq-mean-token-sum-norm constant (null: generation.sampling.max_new_tokens)")
