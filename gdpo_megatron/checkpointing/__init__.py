"""Atomic checkpoints and run-level state (step, sampler, RNG, metrics, config hash)."""

from .manager import Checkpoint, CheckpointError, CheckpointManager, resolve_resume
from .run_state import (
    RunState,
    capture_rng_state,
    check_config_hash,
    config_hash,
    read_run_state,
    restore_rng_state,
    write_run_state,
)

__all__ = [
    "Checkpoint", "CheckpointError", "CheckpointManager", "RunState", "capture_rng_state",
    "check_config_hash", "config_hash", "read_run_state", "resolve_resume", "restore_rng_state",
    "write_run_state",
]
