"""The loop of one reward worker process. Kept free of torch so that a worker starts fast."""

from __future__ import annotations

import importlib
import math
from multiprocessing.connection import Connection

from .registry import REWARDS


def import_rewards(modules: list[str]) -> None:
    importlib.import_module("gdpo_megatron.rewards")
    for module in modules:
        importlib.import_module(module)


def worker_main(conn: Connection, modules: list[str]) -> None:
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
        try:
            value = REWARDS.get(function)(record, response, num_tokens, **args)
            reply = (task_id, "ok", math.nan if value is None else float(value))
        except BaseException as exc:  # noqa: BLE001 - any failure of user code becomes NaN
            reply = (task_id, "error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)
