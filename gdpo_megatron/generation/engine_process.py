"""A vLLM engine in a child process, for several engines on one host (one vLLM per process).

The parent talks to the child over a pipe. Requests and rollouts are small and pickled;
weight buckets are packed into one shared-memory buffer each (`transports.pack_bucket`),
so only a file descriptor crosses the pipe and every engine maps the same pages.

Refit protocol: ("refit",) then ("bucket", packed)* then ("end",). The child feeds the
buckets to one `reload_weights` call as they arrive and answers only after the prefix
cache is reset; the parent waits for every child before the next generate, so no request
ever runs on partly updated weights. The collective refit is ("call", "join_refit_group", args)
once, then ("call", "receive_broadcast", ()) per refit (CUDA IPC: "join_ipc_channel" /
"receive_ipc" alike): the child receives from the refit
group itself while the parent waits.
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from typing import Any

import torch.multiprocessing as tmp

from .transports import PackedBucket, unpack_bucket
from .types import Rollout, SamplingSettings
from .vllm_engine import EngineOptions, VllmEngine


# Engine methods a parent may run in the child by name (refit receivers).
_CALLABLE = ("join_refit_group", "receive_broadcast", "join_ipc_channel", "receive_ipc")


def _serve(conn: Any, options: EngineOptions, threads: int) -> None:
    import torch

    from .vllm_engine import _free_port

    torch.set_num_threads(threads)
    # Each child is its own world of one; a torchrun-style environment inherited from the
    # parent (or a sibling's port) would make the engines collide on one rendezvous port.
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    try:
        engine = VllmEngine(options)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", engine.startup_seconds))
    while True:
        message = conn.recv()
        kind = message[0]
        try:
            if kind == "generate":
                conn.send(("ok", engine.generate(message[1], message[2])))
            elif kind == "refit":
                def stream():
                    while True:
                        item = conn.recv()
                        if item[0] == "end":
                            return
                        yield from unpack_bucket(item[1])

                conn.send(("ok", engine.load_weights(stream())))
            elif kind == "call" and message[1] in _CALLABLE:
                conn.send(("ok", getattr(engine, message[1])(*message[2])))
            elif kind == "close":
                engine.close()
                conn.send(("ok", None))
                return
            else:
                conn.send(("error", f"unknown request {kind!r}"))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class EngineProcess:
    """Parent-side handle; `start_*` sends, `wait` receives, so several engines work at once."""

    def __init__(self, options: EngineOptions, index: int) -> None:
        self.index = index
        ctx = tmp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
        self._process = ctx.Process(target=_serve, args=(child, options, threads), daemon=True,
                                    name=f"vllm-engine-{index}")
        self._process.start()
        child.close()
        self.startup_seconds = self.wait()
        self.weight_version = 0

    def wait(self) -> Any:
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"vLLM engine {self.index} exited (code {self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"vLLM engine {self.index} failed:\n{payload}")
        return payload

    def start_generate(self, prompts: list[tuple[int, list[int]]], sampling: SamplingSettings) -> None:
        self._conn.send(("generate", prompts, sampling))

    def finish_generate(self) -> list[Rollout]:
        return self.wait()

    def begin_refit(self) -> None:
        self._conn.send(("refit",))

    def send_bucket(self, packed: PackedBucket) -> None:
        self._conn.send(("bucket", packed))

    def end_refit(self) -> tuple[int, int]:
        self._conn.send(("end",))
        result = self.wait()
        self.weight_version += 1
        return result

    def start_call(self, method: str, *args: Any) -> None:
        """Run `VllmEngine.<method>(*args)` in the child; `wait()` returns its result."""
        self._conn.send(("call", method, args))

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._conn.send(("close",))
                self.wait()
            except (BrokenPipeError, RuntimeError, OSError):
                pass
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.terminate()


def spawn_is_safe() -> bool:
    """Spawned children re-import __main__; scripts need the `if __name__ == "__main__":` guard."""
    return multiprocessing.current_process().name == "MainProcess"
