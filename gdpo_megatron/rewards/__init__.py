"""Rewards: the registry of reward functions, the parallel runner, and the code sandbox.

Importing this package registers every built-in reward. The runner (which needs torch)
is imported lazily so that reward worker processes stay light.
"""

from __future__ import annotations

from . import code_rewards, length, math_rewards, synthetic, tool_calling  # noqa: F401  (registration)
from .registry import REWARDS, RewardFn
from .sandbox import SandboxLimits, SandboxResult, run_sandboxed

__all__ = ["REWARDS", "RewardFn", "RewardBatch", "RewardRunner", "SandboxLimits", "SandboxResult", "run_sandboxed"]


def __getattr__(name: str):
    if name in ("RewardRunner", "RewardBatch"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
