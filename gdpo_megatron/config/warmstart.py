"""The `warmstart` section: a short supervised phase that creates the initial policy.

The tiny recipe trains a model built from `policy.model` sizes from scratch on the synthetic
task's demonstrations; with `policy.model.hf_path` set, that checkpoint is fine-tuned instead
(the SmolLM2 tool-calling recipes: reference calls of training records teach the output
format). Either way the result is an HF checkpoint that both Megatron and vLLM load.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Section, option


@dataclass
class WarmstartConfig(Section):
    """Supervised warm start (off unless a recipe enables it)."""

    enabled: bool = option(False, doc="train the initial policy on demonstrations before RL "
                                       "(from scratch, or from policy.model.hf_path when set)")
    steps: int = option(300, ge=1, doc="optimizer steps")
    batch_size: int = option(32, ge=1, doc="sequences per step")
    lr: float = option(3e-3, gt=0, doc="peak learning rate (cosine decay, 5% warmup)")
    num_examples: int = option(4000, ge=1, doc="demonstrations generated from the task (tool calling: "
                                                                "at most this many training records)")
