"""Metric key convention (docs/observability.md): slash-separated, `<group>/<name>[/<stat>]`.

Everyone logs with these names so that plots, tables and dashboards find them.
"""

from __future__ import annotations

import re
from typing import Iterable

STEP = "step"
REWARD_COMBINED = "reward/combined/mean"
RESPONSE_LEN_MEAN = "response_len/mean"
TIME_STEP = "time/step"
THROUGHPUT_TOKENS = "throughput/tokens_per_s"
MEMORY_RSS = "memory/rss_gb"

PHASES = ("generation", "rewards", "advantage", "logprobs", "train", "refit", "validation", "checkpoint")

_REWARD_MEAN = re.compile(r"^reward/(?P<name>[^/]+)/mean$")


def reward_mean(name: str) -> str:
    """The key of one reward component's batch mean, e.g. `reward/format/mean`."""
    if "/" in name or not name:
        raise ValueError(f"reward name {name!r} must be non-empty and contain no '/'")
    return f"reward/{name}/mean"


def time_key(phase: str) -> str:
    return f"time/{phase}"


def reward_components(keys: Iterable[str]) -> list[str]:
    """Reward component names present among `keys` (excluding `combined`), sorted."""
    names = set()
    for key in keys:
        match = _REWARD_MEAN.match(key)
        if match and match.group("name") != "combined":
            names.add(match.group("name"))
    return sorted(names)
