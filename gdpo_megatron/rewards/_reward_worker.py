"""The loop of one reward worker process. Kept free of torch so that a worker starts fast."""

from __future__ import annotations

import importlib
import math
import os
import threading
import time
from multiprocessing.connection import Connection

from .outcomes import RewardOutOfRange, RewardRefused, collect_events
from .registry import REWARDS
from .sandbox import SandboxError

# A failure kind the runner counts on its own (runner.py); any other exception is "error".
FAILURE_KINDS = ((RewardRefused, "refused"), (SandboxError, "sandbox_failure"), (RewardOutOfRange, "out_of_range"))


def import_rewards(modules: list[str]) -> None:
    importlib.import_module("gdpo_megatron.rewards")
    for module in modules:
        importlib.import_module(module)


def _exit_with_parent(interval_s: float = 0.5) -> None:
    """A worker whose parent died (a killed trainer) exits, and its sandboxes die with it."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="gdpo-reward-parent-watch").start()


def worker_main(conn: Connection, modules: list[str]) -> None:
    _exit_with_parent()
    try:
        import_rewards(modules)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("import-error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", ""))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        task_id, function, record, response, num_tokens, args = task
        with collect_events() as events:
            try:
                value = REWARDS.get(function)(record, response, num_tokens, **args)
                status, payload = "ok", math.nan if value is None else float(value)
            except BaseException as exc:  # noqa: BLE001 - any failure of user code becomes NaN
                status = next((kind for cls, kind in FAILURE_KINDS if isinstance(exc, cls)), "error")
                payload = f"{type(exc).__name__}: {exc}"
        conn.send((task_id, status, payload, dict(events)))
