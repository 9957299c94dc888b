"""Run-level state saved next to the policy's model part of a checkpoint.

`run_state.json` (readable by people and tools): step, data-sampler state, metrics so
far, the config hash, consecutive NaN skips. `rng.pt`: Python, NumPy and torch RNG
states (binary, exact). Restoring both makes a resumed CPU run reproduce the
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from .manager import CheckpointError

RUN_STATE_FILE = "run_state.json"
RNG_FILE = "rng.pt"
FORMAT_VERSION = 1

# Keys that may change between an interrupted run and its resume without changing what
# the run computes: extending max_steps, moving sinks, or flipping resume itself.
RESUME_SAFE_KEYS = (
    "trainer.max_steps", "trainer.max_epochs", "trainer.resume", "trainer.run_dir",
    "trainer.logging", "trainer.checkpoint", "trainer.validation",
)


@dataclass
class RunState:
    step: int
    config_hash: str
    sampler_state: dict[str, Any] = field(default_factory=dict)
    # The checkpointed step's metrics record (metrics.jsonl form), written into the checkpoint
    # because the record itself is appended just after the save: a run killed in between
    # gets it back on resume.
    step_record: Optional[dict[str, Any]] = None
    consecutive_nan_skips: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def config_hash(config_dict: dict[str, Any], ignore: tuple[str, ...] = RESUME_SAFE_KEYS) -> str:
    """A stable hash of the resolved recipe minus the keys a resume may change."""
    trimmed = _drop_dotted(config_dict, ignore)
    canonical = json.dumps(trimmed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _drop_dotted(data: Any, ignore: tuple[str, ...], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        return data
    out = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if dotted in ignore:
            continue
        out[key] = _drop_dotted(value, ignore, dotted)
    return out


def capture_rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_run_state(directory: Path, state: RunState, rng_state: dict[str, Any] | None = None) -> None:
    """Write `run_state.json` and `rng.pt` into a checkpoint directory being built."""
    payload = asdict(state)
    try:
        text = json.dumps(payload, indent=1, allow_nan=False)
    except ValueError as exc:
        raise CheckpointError(f"run state for step {state.step} is not strict JSON ({exc}); "
                              "store NaN metrics as null") from exc
    (directory / RUN_STATE_FILE).write_text(text + "\n", encoding="utf-8")
    torch.save(rng_state if rng_state is not None else capture_rng_state(), directory / RNG_FILE)


def read_run_state(directory: Path) -> tuple[RunState, dict[str, Any]]:
    """Read what `write_run_state` wrote; errors name the file."""
    state_path = directory / RUN_STATE_FILE
    try:
        payload = json.loads(state_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{state_path}: missing; not a gdpo-megatron checkpoint") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{state_path}: invalid JSON ({exc})") from None
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{state_path}: format_version {version!r}, this version reads {FORMAT_VERSION}")
    payload.pop("metrics_so_far", None)  # an older field that held nothing a resume used
    try:
        state = RunState(**payload)
    except TypeError as exc:
        raise CheckpointError(f"{state_path}: unexpected fields ({exc})") from None
    # The RNG file holds numpy arrays and Python tuples, which weights_only refuses.
    rng = torch.load(directory / RNG_FILE, weights_only=False)
    return state, rng


def check_config_hash(state: RunState, current_hash: str, checkpoint_dir: Path) -> None:
    """Refuse to resume a checkpoint with a recipe that computes something else."""
    if state.config_hash != current_hash:
        raise CheckpointError(
            f"{checkpoint_dir}: written with recipe hash {state.config_hash}, the current recipe hashes to "
            f"{current_hash}. Resuming would mix two different runs; use a new trainer.run_dir or "
            f"trainer.resume=false in a fresh directory (only {', '.join(RESUME_SAFE_KEYS)} may change on resume)")
