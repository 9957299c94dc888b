"""The `scoring` section: how the reward runner executes reward functions.

Owned by the rewards work (issue 5); extend here, keep every field documented.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Section, option


@dataclass
class ScoringConfig(Section):
    """Parallelism and limits of reward computation."""

    num_workers: int = option(2, ge=1, doc="reward processes in the pool")
    timeout_s: float = option(10.0, gt=0, doc="wall-clock limit of one reward call; on expiry the value is NaN")
    max_logged_errors: int = option(5, ge=0, doc="first N reward failures per reward are logged with the record id")
