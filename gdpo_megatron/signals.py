"""Graceful stop on SIGTERM/SIGINT: finish the step, checkpoint, exit.

Slurm sends SIGTERM (or the signal chosen with `--signal`) some time before it kills a
job; Ctrl-C sends SIGINT. The handler only sets a flag; the training loop checks
`stop.requested` between steps, saves a checkpoint and returns
`INTERRUPTED_EXIT_CODE`. A second SIGINT means "now": it raises KeyboardInterrupt
(no checkpoint; the last complete one stays valid thanks to the atomic save).

    with GracefulStop() as stop:
        for step in ...:
            train_one_step()
            if stop.requested:
                save_checkpoint(step)
                return INTERRUPTED_EXIT_CODE
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Callable, TextIO

# EX_TEMPFAIL from sysexits.h: "try again later". Distinct from 0 (finished) and from a
# crash, so a launcher can requeue exactly the runs that stopped cleanly mid-way.
INTERRUPTED_EXIT_CODE = 75
# What a shell reports for a process killed by SIGINT; used for the forced abort.
ABORTED_EXIT_CODE = 130


class GracefulStop:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT),
                 stream: TextIO | None = None, enabled: bool = True) -> None:
        # enabled=False (trainer.checkpoint.save_on_signal=false) keeps the default
        # handlers: a signal then stops the process at once, as without gdpo.
        self.signals = signals if enabled else ()
        self.stream = stream
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Callable | int | None] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is not threading.main_thread():
            # Python delivers signals to the main thread only; installing elsewhere raises.
            raise RuntimeError("GracefulStop must be entered on the main thread")
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def request(self, reason: str) -> None:
        """Ask the loop to stop as if a signal had arrived (e.g. from a time limit)."""
        if not self.requested:
            self.requested = True
            self.signal_name = reason
            self._say(f"gdpo: {reason}: finishing the current step, then checkpointing and exiting "
                      f"(exit code {INTERRUPTED_EXIT_CODE}); press Ctrl-C again to abort without saving")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            self._say("gdpo: second interrupt: aborting now without a checkpoint "
                      "(the last complete checkpoint is intact)")
            raise KeyboardInterrupt
        if self.requested:
            self._say(f"gdpo: {name} received again; still finishing the step to checkpoint")
            return
        self.request(f"{name} received")

    def _say(self, message: str) -> None:
        stream = self.stream or sys.stderr
        print(message, file=stream, flush=True)
