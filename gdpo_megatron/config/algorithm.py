"""The `algorithm` section: advantage estimator, its numerics, rewards, and the policy loss.

Numeric fields of the advantage stage default to null, meaning "take the value of the
preset"; `gdpo_megatron.algorithms.advantages.resolve_numerics` turns the section into
concrete numbers (and the trainer logs them). See docs/advantages.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from .errors import ConfigError, did_you_mean
from .group_filter import GroupFilterConfig
from .loss import LossConfig
from .schema import Section, option

Preset = Literal["trl", "verl", "nemo_rl"]
GroupBaseline = Literal["mean", "leave_one_out"]
GroupStd = Literal["unbiased", "biased", "leave_one_out", "none"]
EpsMode = Literal["add", "where_positive"]
SingletonGroup = Literal["zero", "raw"]
BatchNorm = Literal["none", "sample", "token"]
BatchEpsMode = Literal["add", "where_positive", "inside_sqrt"]


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

    def validate(self) -> None:
        if not self.name or not self.name.strip():
            raise ConfigError("name: a reward needs a non-empty name")
        if "/" in self.name:
            raise ConfigError(f"name: {self.name!r} may not contain '/' (it becomes a metric key reward/<name>/...)")
        if self.name == "combined":
            raise ConfigError("name: 'combined' is taken by the metric reward/combined/mean (the weighted sum); "
                              "choose another name")

    @property
    def function_name(self) -> str:
        return self.function or self.name


@dataclass
class AlgorithmConfig(Section):
    """How rollouts' rewards become advantages, and the loss that uses them.

    Numeric fields left at null take the value of `preset`; set one to override it.
    """

    estimator: str = option("gdpo", doc="registered advantage estimator: gdpo, grpo, grpo_nostd, dr_grpo, rloo, gpg")
    preset: Preset = option(
        "trl", doc="numerics of a reference implementation: trl (default: the GDPO authors' public "
                   "reference, NaN-aware), verl, nemo_rl (see docs/advantages.md)")
    group_baseline: Optional[GroupBaseline] = option(None, doc="group baseline: mean, or leave_one_out (mean of the others)")
    group_std: Optional[GroupStd] = option(
        None, doc="group scale: unbiased, biased, leave_one_out (unbiased std of the others), or none")
    group_eps: Optional[float] = option(None, ge=0.0, doc="epsilon in the group normalization denominator")
    eps_mode: Optional[EpsMode] = option(None, doc="add: x/(std+eps); where_positive: divide only where std > 0")
    singleton_group: Optional[SingletonGroup] = option(
        None, doc="a group with one valid value: zero (advantage 0) or raw (mean 0, std 1, as verl)")
    batch_norm: Optional[BatchNorm] = option(
        None, doc="normalization over the whole batch (GDPO step 3): none, sample, or token "
                  "(response-length weighted); null: the preset's for gdpo, none for the other estimators")
    batch_eps: Optional[float] = option(None, ge=0.0, doc="epsilon of the batch normalization")
    batch_eps_mode: Optional[BatchEpsMode] = option(
        None, doc="add: /(std+eps); where_positive: /std only where std > 0; inside_sqrt: *rsqrt(var+eps)")
    rewards: list[RewardSpec] = option(default_factory=list, doc="the K named rewards, in column order of the reward tensor")
    loss: LossConfig = option(default_factory=LossConfig, doc="policy loss")
    group_filter: GroupFilterConfig = option(
        default_factory=GroupFilterConfig, doc="GFPO: train on the best k of each prompt's rollouts (off by default)")

    def validate(self) -> None:
        # estimator names and the numerics each one fixes are checked by the estimator
        # registry's owner (gdpo_megatron.recipe_checks), not here.
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
        unknown = [n for n in self.group_filter.efficiency_rewards if n not in names]
        if unknown:
            raise ConfigError(f"group_filter.efficiency_rewards: no reward named {unknown[0]!r}"
                              f"{did_you_mean(unknown[0], names)}; rewards: {', '.join(names)}")
        if self.rewards and all(r.weight == 0.0 for r in self.rewards):
            raise ConfigError("rewards: every reward weight is 0, so every advantage would be 0")

    @property
    def reward_names(self) -> list[str]:
        return [r.name for r in self.rewards]

    @property
    def reward_weights(self) -> list[float]:
        return [r.weight for r in self.rewards]
