"""The `algorithm` section: advantage estimator, its numerics, rewards, and the policy loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from .errors import ConfigError, did_you_mean
from .loss import LossConfig
from .schema import Section, option

GroupBaseline = Literal["mean", "leave_one_out"]
GroupStd = Literal["unbiased", "biased", "leave_one_out", "none"]
EpsMode = Literal["add", "where_positive"]
BatchNorm = Literal["none", "sample", "token"]


@dataclass
class RewardCondition(Section):
    """Paper Eq. 8: the reward counts only where another reward reaches a threshold."""

    reward: str = option(doc="name of the reward that gates this one (its raw value is compared)")
    threshold: float = option(doc="the gate opens where that reward is >= threshold")
    otherwise: float = option(0.0, doc="value this reward takes where the gate is closed")


@dataclass
class RewardSpec(Section):
    """One named reward: which registered function computes it, its weight and arguments."""

    name: str = option(doc="unique label of this reward in metrics and in conditions")
    function: Optional[str] = option(None, doc="registered reward function; defaults to `name`")
    weight: float = option(1.0, doc="weight w_k in the sum of (normalized) rewards")
    args: dict[str, Any] = option(default_factory=dict, doc="keyword arguments passed to the reward function")
    condition: Optional[RewardCondition] = option(None, doc="optional gate on another reward (GDPO Eq. 8)")

    @property
    def function_name(self) -> str:
        return self.function or self.name


@dataclass
class AlgorithmConfig(Section):
    """How rollouts' rewards become advantages, and the loss that uses them.

    Numeric fields left at null take the value of `preset`; set one to override it.
    """

    estimator: str = option("gdpo", doc="registered advantage estimator: gdpo, grpo, grpo_nostd, dr_grpo, rloo, gpg")
    preset: Literal["trl", "verl", "nemo_rl"] = option(
        "trl", doc="numerics of a reference implementation (see docs/advantages.md); trl is the default")
    group_baseline: Optional[GroupBaseline] = option(None, doc="group baseline: mean, or leave_one_out (mean of the others)")
    group_std: Optional[GroupStd] = option(None, doc="group scale: unbiased, biased, leave_one_out, or none")
    group_eps: Optional[float] = option(None, ge=0.0, doc="epsilon in the group normalization denominator")
    eps_mode: Optional[EpsMode] = option(None, doc="add: x/(std+eps); where_positive: divide only where std > 0")
    batch_norm: Optional[BatchNorm] = option(None, doc="GDPO step 3: none, per sample, or per token (response-length weighted)")
    batch_eps: Optional[float] = option(None, ge=0.0, doc="epsilon of the batch normalization")
    rewards: list[RewardSpec] = option(default_factory=list, doc="the K named rewards, in column order of the reward tensor")
    loss: LossConfig = option(default_factory=LossConfig, doc="policy loss")

    def validate(self) -> None:
        from gdpo_megatron.algorithms.advantages import ESTIMATORS

        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator: unknown estimator {self.estimator!r}"
                              f"{did_you_mean(self.estimator, ESTIMATORS)}; registered: {', '.join(sorted(ESTIMATORS))}")
        names = [r.name for r in self.rewards]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"rewards: reward names must be unique, repeated: {', '.join(duplicates)}")
        for i, reward in enumerate(self.rewards):
            cond = reward.condition
            if cond is None:
                continue
            if cond.reward == reward.name:
                raise ConfigError(f"rewards[{i}].condition.reward: reward {reward.name!r} cannot be conditioned on itself")
            if cond.reward not in names:
                raise ConfigError(f"rewards[{i}].condition.reward: no reward named {cond.reward!r}"
                                  f"{did_you_mean(cond.reward, names)}; rewards: {', '.join(names)}")

    @property
    def reward_names(self) -> list[str]:
        return [r.name for r in self.rewards]

    @property
    def reward_weights(self) -> list[float]:
        return [r.weight for r in self.rewards]
