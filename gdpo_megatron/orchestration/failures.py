"""Worker failures as one clear message: which worker, which step, how to continue.

A dead Ray actor (process crash, OOM kill, lost node) surfaces in the driver as a
RayActorError subclass with a multi-line system message; an exception inside a worker
as a RayTaskError wrapping the remote traceback. Both become `WorkerFailure`, whose
message names the worker (its Ray actor name, e.g. `policy-rank1`), the node it ran on
(the address in Ray's report, else the one the trainer recorded at start-up) and the
training step. Where a rerun can help (a process died, a node was lost, an unexpected
error) it says that the same command resumes from the last complete checkpoint; where the
cause is the recipe, the data or the code (a configuration error, an import error, a bad
argument) it says that a rerun fails the same way.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

_NAME = re.compile(r"^\s*name: (?P<name>\S+)\s*$", re.MULTILINE)
_CLASS = re.compile(r"^\s*class_name: (?P<name>\S+)\s*$", re.MULTILINE)
_PID = re.compile(r"^\s*pid: (?P<pid>\d+)\s*$", re.MULTILINE)
_IP = re.compile(r"^\s*ip: (?P<ip>\S+)\s*$", re.MULTILINE)
_TASK_IP = re.compile(r"\bip=(?P<ip>[0-9a-fA-F.:]+)")


def rerun_can_fix(cause: BaseException | None) -> bool:
    """False for errors that are the same on every attempt: the recipe, the data or the code."""
    from gdpo_megatron.config.errors import ConfigError
    from gdpo_megatron.data.records import RecordError

    deterministic = (ConfigError, RecordError, ImportError, KeyError, TypeError, NotImplementedError)
    return not isinstance(cause, deterministic)


class WorkerFailure(RuntimeError):
    def __init__(self, worker: str, step: int | None, kind: str, detail: str,
                 checkpoint_hint: str = "the last complete checkpoint", node: str | None = None,
                 resumable: bool = True) -> None:
        self.worker = worker
        self.node = node
        self.step = step
        self.kind = kind  # "died" (process gone) or "raised" (exception inside the worker)
        self.detail = detail
        self.resumable = resumable
        when = f"during step {step}" if step is not None else "before the first step"
        what = "died" if kind == "died" else "failed"
        where = f" on node {node}" if node else ""
        if resumable:
            advice = (f"The run stopped. Rerun the same command to resume from {checkpoint_hint} "
                      "(trainer.resume=auto); steps after it are recomputed.")
        else:
            advice = ("The run stopped. This error does not go away by itself: fix its cause (the recipe, "
                      "the data or the code named above) before running again.")
        super().__init__(f"worker {worker}{where} {what} {when}: {detail}\n{advice}")


def _actor_death_detail(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    # Ray's system message ends with the cause (exit type and detail); keep that part.
    tail = [line for line in lines if not re.match(r"^(class_name|actor_id|pid|name|namespace|ip):", line)]
    detail = " ".join(tail[1:] if len(tail) > 1 else tail)
    pid = _PID.search(message)
    if pid:
        detail = f"{detail} (pid {pid.group('pid')})"
    return detail or "the actor process is gone"


def as_worker_failure(exc: BaseException, step: int | None, worker: str | None = None,
                      checkpoint_hint: str = "the last complete checkpoint",
                      nodes: Mapping[str, str] | None = None) -> WorkerFailure | None:
    """The WorkerFailure for a Ray error, or None when `exc` is not a worker failure.

    `nodes` maps worker names to node addresses, for errors whose report carries none.
    """
    nodes = nodes or {}
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

    if isinstance(exc, WorkerFailure):
        return exc
    if isinstance(exc, RayActorError):
        message = getattr(exc, "error_msg", None) or str(exc)
        name = _NAME.search(message)
        klass = _CLASS.search(message)
        worker = worker or (name.group("name") if name else None) or (
            f"{klass.group('name')} (actor {exc.actor_id})" if klass else f"actor {exc.actor_id}")
        ip = _IP.search(message)
        node = ip.group("ip") if ip else nodes.get(worker)
        return WorkerFailure(worker, step, "died", _actor_death_detail(message), checkpoint_hint, node)
    if isinstance(exc, WorkerCrashedError):
        worker = worker or "a Ray worker"
        return WorkerFailure(worker, step, "died", str(exc).strip(), checkpoint_hint, nodes.get(worker))
    if isinstance(exc, RayTaskError):
        # The exception the driver sees is a RayTaskError subclass proxying the remote
        # cause; the call site (function, pid, actor id) is only in its message header.
        text = _ANSI.sub("", str(exc))
        header = _TASK_HEADER.search(text)
        function = header.group("function") if header else "a Ray task"
        cause = vars(exc).get("cause")
        summary = f"{type(cause).__name__}: {cause}" if cause is not None else text.strip().splitlines()[-1]
        where = f"in {function}" + (f", pid {header.group('pid')}" if header else "")
        actor_id = _ACTOR_ID.search(text)
        worker = worker or (_actor_name(actor_id.group(1)) if actor_id else None) or function
        ip = _TASK_IP.search(header.group(0) if header else "") or _TASK_IP.search(text)
        node = ip.group("ip") if ip else nodes.get(worker)
        return WorkerFailure(worker, step, "raised", f"{summary} ({where})", checkpoint_hint, node,
                             resumable=rerun_can_fix(cause))
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TASK_HEADER = re.compile(r"ray::(?P<function>[\w.<>]+)\(\)\s*\(pid=(?P<pid>\d+)")
_ACTOR_ID = re.compile(r"actor_id=([0-9a-f]+)")


def _actor_name(actor_id: str) -> str | None:
    """The name an actor was created with (`.options(name=...)`), looked up in Ray's GCS."""
    try:
        import ray

        return ray._private.state.actors(actor_id).get("Name") or None
    except Exception:  # noqa: BLE001 - naming is best effort; the function name is the fallback
        return None


@contextmanager
def worker_failures(current_step: Callable[[], int | None] | int | None = None,
                    checkpoint_hint: str = "the last complete checkpoint",
                    nodes: Mapping[str, str] | None = None) -> Iterator[None]:
    """Turn Ray worker errors raised inside the block into WorkerFailure (chained to the original).

    `nodes` (worker name -> node address) may be filled while the block runs.
    """
    try:
        yield
    except WorkerFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - everything that is not a worker failure re-raises as is
        step = current_step() if callable(current_step) else current_step
        failure = as_worker_failure(exc, step, checkpoint_hint=checkpoint_hint, nodes=nodes)
        if failure is None:
            raise
        raise failure from exc


def get_all(named_refs: Mapping[str, Any] | Sequence[tuple[str, Any]], step: int | None,
            timeout_s: float | None = None, nodes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Results of several workers' calls, failing fast on the first worker that fails.

    `ray.get(list)` can wait forever on a healthy rank stuck in a collective with a dead
    peer; `ray.wait` returns the dead worker's error as soon as it exists, and the
    error names that worker.
    """
    import ray
    from ray.exceptions import GetTimeoutError

    pairs = list(named_refs.items()) if isinstance(named_refs, Mapping) else list(named_refs)
    name_of = {ref: name for name, ref in pairs}
    pending = [ref for _, ref in pairs]
    results: dict[str, Any] = {}
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=timeout_s)
        if not done:
            names = ", ".join(name_of[r] + (f" (node {nodes[name_of[r]]})" if nodes and name_of[r] in nodes else "")
                              for r in pending)
            raise WorkerFailure(names, step, "died", f"no answer within {timeout_s:.0f}s (hung or unreachable)")
        ref = done[0]
        try:
            results[name_of[ref]] = ray.get(ref)
        except GetTimeoutError:  # pragma: no cover - ray.wait said it is ready
            raise
        except Exception as exc:  # noqa: BLE001
            failure = as_worker_failure(exc, step, worker=name_of[ref], nodes=nodes)
            if failure is None:
                raise
            raise failure from exc
    return {name: results[name] for name, _ in pairs}
