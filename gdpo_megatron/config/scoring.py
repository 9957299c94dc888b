"""The `scoring` section: how the reward runner executes reward functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import ConfigError
from .schema import Section, option


@dataclass
class ScoringConfig(Section):
    """Parallelism and limits of reward computation."""

    num_workers: int = option(2, ge=1, doc="reward processes in the pool")
    timeout_s: float = option(10.0, gt=0, doc="wall-clock limit of one reward call; on expiry the value is NaN "
                                               "and the worker process is replaced")
    max_logged_errors: int = option(5, ge=0, doc="first N reward failures per reward are logged with the record id")
    reward_modules: list[str] = option(default_factory=list,
                                       doc="extra Python modules imported by the runner and each worker so that "
                                           "their @REWARDS.register functions exist (custom rewards)")
    start_method: Literal["spawn", "forkserver", "fork"] = option(
        "spawn", doc="how reward workers start; spawn is safe next to threads (Ray, torch)")

    def validate(self) -> None:
        for i, module in enumerate(self.reward_modules):
            if not module or any(not part.isidentifier() for part in module.split(".")):
                raise ConfigError(f"reward_modules[{i}]: not a dotted module name: {module!r}")
