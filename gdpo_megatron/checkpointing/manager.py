"""Atomic, pruned checkpoints: `save(step, write_fn)` never damages the last good one.

Protocol (all inside `<run>/checkpoints/`):
1. `write_fn(tmp)` fills `.tmp-step-N/` (the policy's shards, run state, anything).
2. A `COMPLETE` marker is written, everything is fsynced.
3. `.tmp-step-N` is renamed to `step-N` (atomic), the directory is fsynced.
4. `latest` is rewritten atomically to name `step-N`.
5. Checkpoints beyond `keep_last` are renamed to `.trash-step-K` (atomic) and deleted.

A crash at any point leaves either the old set of complete checkpoints or the new one;
leftovers (`.tmp-*`, `.trash-*`) are removed when the next manager starts. `latest()`
only ever returns a directory carrying the `COMPLETE` marker.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .atomic import atomic_write_text, fsync_dir, fsync_tree

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
LATEST_POINTER = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_LEFTOVER_PREFIXES = (".tmp-step-", ".trash-step-")


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the directory."""


class CheckpointManager:
    def __init__(self, directory: str | Path, keep_last: int = 2, *, fsync: bool = True,
                 clean_leftovers: bool = True) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self.fsync = fsync
        self.directory.mkdir(parents=True, exist_ok=True)
        if clean_leftovers:
            self.clean_leftovers()

    def path_for(self, step: int) -> Path:
        return self.directory / f"step-{step}"

    def clean_leftovers(self) -> list[Path]:
        """Remove partial saves and half-pruned directories from an earlier crash."""
        removed = []
        for entry in sorted(self.directory.iterdir()):
            if entry.name.startswith(_LEFTOVER_PREFIXES):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
                logger.warning("removed incomplete checkpoint directory %s (left by an interrupted save)", entry)
        return removed

    def complete(self) -> list[Checkpoint]:
        """All complete checkpoints, oldest first."""
        found = []
        for entry in self.directory.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and entry.is_dir() and (entry / COMPLETE_MARKER).is_file():
                found.append(Checkpoint(int(match.group(1)), entry))
        return sorted(found, key=lambda c: c.step)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None.

        The `latest` pointer is a convenience for people and scripts; the directories
        are the truth, so a crash between rename and pointer update loses nothing.
        """
        complete = self.complete()
        return complete[-1] if complete else None

    def save(self, step: int, write_fn: Callable[[Path], None]) -> Checkpoint:
        """Run `write_fn(tmp_dir)` and publish the result as `step-<step>` atomically.

        A step that already has a complete checkpoint is not written again (the state at
        step N is the state at step N; this happens when a signal arrives right after a
        resume), because replacing it would open a window with no copy at all.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        existing = self.path_for(step)
        if (existing / COMPLETE_MARKER).is_file():
            logger.info("checkpoint %s already exists and is complete; not saving it again", existing)
            return Checkpoint(step, existing)
        tmp = self.directory / f".tmp-step-{step}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            write_fn(tmp)
            (tmp / COMPLETE_MARKER).write_text(f"{step}\n", encoding="utf-8")
            if self.fsync:
                fsync_tree(tmp)
        except BaseException:
            # Also on KeyboardInterrupt: the partial directory must not look like a checkpoint.
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = existing
        if final.exists():
            # An incomplete directory under the final name can only come from outside this
            # protocol (a manual copy); it is not a checkpoint, so it may go.
            self._retire(final)
        os.rename(tmp, final)
        if self.fsync:
            fsync_dir(self.directory)
        atomic_write_text(self.directory / LATEST_POINTER, f"{final.name}\n", fsync=self.fsync)
        self.prune()
        return Checkpoint(step, final)

    def prune(self) -> list[int]:
        """Delete the oldest complete checkpoints beyond keep_last; returns their steps."""
        complete = self.complete()
        doomed = complete[:-self.keep_last] if len(complete) > self.keep_last else []
        for checkpoint in doomed:
            self._retire(checkpoint.path)
        return [c.step for c in doomed]

    def _retire(self, path: Path) -> None:
        trash = self.directory / f".trash-{path.name}"
        if trash.exists():
            shutil.rmtree(trash)
        os.rename(path, trash)
        if self.fsync:
            fsync_dir(self.directory)
        shutil.rmtree(trash, ignore_errors=True)


def resolve_resume(manager: CheckpointManager, resume: bool | str) -> Checkpoint | None:
    """Apply `trainer.resume` (true / false / "auto") to what the run directory holds."""
    latest = manager.latest()
    if resume == "auto":
        return latest
    if resume is True:
        if latest is None:
            raise CheckpointError(
                f"trainer.resume=true but {manager.directory} holds no complete checkpoint; "
                "use trainer.resume=auto to start fresh when there is none")
        return latest
    if resume is False:
        if latest is not None:
            raise CheckpointError(
                f"trainer.resume=false but {manager.directory} already holds checkpoints (newest: "
                f"{latest.path.name}); starting over there would mix two runs. Use another "
                "trainer.run_dir, delete the directory, or resume with trainer.resume=auto")
        return None
    raise ValueError(f"resume must be true, false or 'auto', got {resume!r}")
