"""The `trainer` section: batch sizes, loop length, checkpoints and logging.

Owned by the training-loop work (issue 6); extend here, keep every field documented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .schema import Section, option


@dataclass
class CheckpointConfig(Section):
    """When and how many checkpoints are kept."""

    every_steps: int = option(50, ge=0, doc="save every N steps (0: only at the end and on SIGTERM)")
    keep_last: int = option(2, ge=1, doc="checkpoints kept; older ones are pruned")


@dataclass
class LoggingConfig(Section):
    """Metric sinks. JSONL is always written to the run directory."""

    tensorboard: bool = option(False, doc="write TensorBoard event files")
    wandb: bool = option(False, doc="log to Weights & Biases")
    wandb_project: str = option("gdpo-megatron", doc="W&B project")
    wandb_mode: str = option("offline", doc="W&B mode: online, offline or disabled")


@dataclass
class TrainerConfig(Section):
    """The RL loop."""

    max_steps: int = option(100, ge=1, doc="training steps")
    prompts_per_step: int = option(32, ge=1, doc="prompts sampled per step")
    rollouts_per_prompt: int = option(8, ge=1, doc="rollouts per prompt (group size G)")
    mini_batches_per_step: int = option(1, ge=1, doc="optimizer steps per training step")
    ppo_epochs: int = option(1, ge=1, doc="passes over the step's rollouts")
    val_every_steps: int = option(0, ge=0, doc="validate every N steps (0: never)")
    run_dir: Optional[str] = option(None, doc="run directory (null: runs/<recipe name>)")
    checkpoint: CheckpointConfig = option(default_factory=CheckpointConfig, doc="checkpointing")
    logging: LoggingConfig = option(default_factory=LoggingConfig, doc="metric sinks")
