"""The reward registry: name -> `fn(record, response, num_tokens, **args) -> float`.

A reward returns a raw value, or NaN where it does not apply to the record. Gating one
reward on another (GDPO Eq. 8) is the advantage stage's job (`algorithm.rewards[i].condition`),
so reward functions stay raw and can be combined freely by recipes.
"""

from __future__ import annotations

from typing import Any, Protocol

from gdpo_megatron.registry import Registry


class RewardFn(Protocol):
    def __call__(self, record: dict, response: str, num_tokens: int, **args: Any) -> float: ...


REWARDS: Registry[RewardFn] = Registry("reward")
