"""The `trainer` section: batch sizes, loop length, checkpoints, logging and reliability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from .errors import ConfigError
from .schema import Section, option


@dataclass
class CheckpointConfig(Section):
    """When and how many checkpoints are kept."""

    every_steps: int = option(50, ge=0, doc="save every N steps (0: only at the end and on SIGTERM/SIGINT)")
    keep_last: int = option(2, ge=1, doc="complete checkpoints kept; older ones are pruned after each save")
    save_on_signal: bool = option(True, doc="on SIGTERM/SIGINT finish the current step, checkpoint and exit")
    fsync: bool = option(True, doc="fsync checkpoint files before publishing them (off only on throwaway disks)")


@dataclass
class LoggingConfig(Section):
    """Metric sinks. JSONL (`<run_dir>/metrics.jsonl`) is always written."""

    tensorboard: bool = option(False, doc="write TensorBoard event files to <run_dir>/tensorboard")
    wandb: bool = option(False, doc="log to Weights & Biases (files under <run_dir>/wandb)")
    wandb_project: str = option("gdpo-megatron", doc="W&B project")
    wandb_entity: Optional[str] = option(None, doc="W&B entity (team or user); null: the account default")
    wandb_mode: Literal["online", "offline", "disabled"] = option(
        "offline", doc="W&B mode; offline needs no network (sync later with `wandb sync <run_dir>/wandb`)")
    progress: Literal["auto", "live", "plain", "off"] = option(
        "auto", doc="terminal progress: live status line on a TTY, one plain line per step otherwise (auto)")
    progress_keys: list[str] = option(
        default_factory=list,
        doc="extra metric keys shown on the progress line (reward means and response length are always shown)")


@dataclass
class DynamicSamplingConfig(Section):
    """Drop prompt groups whose rewards are all equal (no learning signal) and refill the batch."""

    enabled: bool = option(False, doc="drop zero-variance groups and over-sample prompts to refill the step")
    max_resample_rounds: int = option(3, ge=0, doc="extra generation rounds per step before training on what is there")


@dataclass
class ValidationConfig(Section):
    """Held-out evaluation during training."""

    every_steps: int = option(0, ge=0, doc="validate every N steps (0: never)")
    num_prompts: int = option(64, ge=1, doc="held-out prompts per validation")
    at_start: bool = option(False, doc="also validate before the first step (a baseline for the curves)")


@dataclass
class TrainerConfig(Section):
    """The RL loop."""

    max_steps: int = option(100, ge=1, doc="training steps")
    max_epochs: int = option(0, ge=0, doc="stop after this many passes over the prompts (0: only max_steps)")
    prompts_per_step: int = option(32, ge=1, doc="prompts sampled per step")
    rollouts_per_prompt: int = option(8, ge=1, doc="rollouts per prompt (group size G)")
    mini_batches_per_step: int = option(1, ge=1, doc="optimizer steps per training step")
    ppo_epochs: int = option(1, ge=1, doc="passes over the step's rollouts")
    validation: ValidationConfig = option(default_factory=ValidationConfig, doc="held-out validation")
    dynamic_sampling: DynamicSamplingConfig = option(default_factory=DynamicSamplingConfig, doc="zero-variance group filtering")
    overlap_generation: bool = option(
        False, doc="generate the next step's rollouts while this step trains: one step off-policy (the rollouts "
                   "come from the weights before the update they feed); needs generation.colocated false and "
                   "the vllm backend")
    overlong_filtering: bool = option(
        False, doc="exclude responses cut at max_new_tokens from the loss (they still count in reward metrics)")
    max_consecutive_nan_skips: int = option(
        3, ge=0, doc="NaN/inf loss or grad norm skips the update; stop after this many in a row (0: stop at the first)")
    resume: Union[bool, Literal["auto"]] = option(
        "auto", doc="true: resume from the run directory's latest checkpoint (error if none); "
                    "false: start fresh (error if checkpoints exist); auto: resume when one exists")
    run_dir: Optional[str] = option(None, doc="run directory (null: runs/<recipe name>)")
    checkpoint: CheckpointConfig = option(default_factory=CheckpointConfig, doc="checkpointing")
    logging: LoggingConfig = option(default_factory=LoggingConfig, doc="metric sinks and progress display")

    def validate(self) -> None:
        if self.mini_batches_per_step > self.prompts_per_step * self.rollouts_per_prompt:
            raise ConfigError(
                f"mini_batches_per_step: {self.mini_batches_per_step} exceeds the rollouts per step "
                f"({self.prompts_per_step} prompts x {self.rollouts_per_prompt} rollouts)")
