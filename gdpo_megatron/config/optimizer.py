"""The `policy.optimizer` section: Adam, gradient clipping and the LR schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from .errors import ConfigError
from .schema import Section, option


@dataclass
class OptimizerConfig(Section):
    """Adam with a warmup + decay schedule, sharded by Megatron's distributed optimizer."""

    lr: float = option(1e-6, gt=0, doc="peak learning rate")
    min_lr: float = option(0.0, ge=0, doc="final learning rate of the decay")
    weight_decay: float = option(0.01, ge=0, doc="decoupled weight decay")
    adam_beta1: float = option(0.9, ge=0, lt=1, doc="Adam beta1")
    adam_beta2: float = option(0.999, ge=0, lt=1, doc="Adam beta2")
    adam_eps: float = option(1e-8, gt=0, doc="Adam epsilon")
    clip_grad: float = option(1.0, ge=0, doc="global gradient-norm clip (0 disables)")
    schedule: Literal["constant", "cosine", "linear"] = option("constant", doc="decay after warmup")
    warmup_steps: int = option(0, ge=0, doc="linear warmup steps")
    distributed: bool = option(True, doc="shard optimizer state over data-parallel ranks")
    decay_steps: Optional[int] = option(None, ge=1, doc="optimizer updates over which cosine/linear decay to min_lr "
                                        "(null: trainer.max_steps * trainer.mini_batches_per_step * trainer.ppo_epochs)")

    def validate(self) -> None:
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr: must be <= lr ({self.lr:g}), got {self.min_lr:g}")
        if self.decay_steps is not None and self.warmup_steps >= self.decay_steps:
            raise ConfigError(f"warmup_steps: must be < decay_steps ({self.decay_steps}), got {self.warmup_steps}")
