"""The `warmstart` section: a short supervised phase that creates the initial policy.

Used by the embedded tiny recipe: a model built from `policy.model` sizes is trained
from scratch on the task's demonstration responses before RL starts, then saved as an
HF checkpoint that both Megatron and vLLM load.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Section, option


@dataclass
class WarmstartConfig(Section):
    """Supervised warm start (off unless a recipe enables it)."""

    enabled: bool = option(False, doc="train the initial policy from scratch on demonstrations before RL")
    steps: int = option(300, ge=1, doc="optimizer steps")
    batch_size: int = option(32, ge=1, doc="sequences per step")
    lr: float = option(3e-3, gt=0, doc="peak learning rate (cosine decay, 5% warmup)")
    num_examples: int = option(4000, ge=1, doc="demonstrations generated from the task")
