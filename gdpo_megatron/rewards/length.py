"""Length reward shared by every task: 1 when the response fits the token budget."""

from __future__ import annotations

from .registry import REWARDS


@REWARDS.register("length")
def length(record: dict, response: str, num_tokens: int, max_tokens: int = 4000) -> float:
    """1.0 if num_tokens <= max_tokens else 0.0 (paper: L = 4000 for math/code)."""
    return 1.0 if num_tokens <= max_tokens else 0.0
