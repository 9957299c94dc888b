"""Score a batch of rollouts with K named rewards in a pool of worker processes.

Each (rollout, reward) call runs in a worker under `scoring.timeout_s`. A call that raises
yields NaN and counts in `reward_errors/<name>`; one that overruns yields NaN, counts in
`reward_timeouts/<name>`, and its worker is killed and replaced (a hung reward cannot be
interrupted in-process: math-verify and sandboxes use their own signals and children).
A worker that dies for any reason is replaced the same way. The run never dies because of
one rollout. The first `scoring.max_logged_errors` failures per reward are logged with the
record id. Refusals (the record's data cannot be scored with the reward's guarantees),
sandbox failures and values outside a reward's declared range are NaN as well, each with its
own counter; sandboxed programs stopped at their time limit are counted without changing
the value (docs/rewards.md).
"""

from __future__ import annotations

import logging
import math
import multiprocessing as mp
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any, Optional

import torch

from gdpo_megatron.config.algorithm import RewardSpec
from gdpo_megatron.config.errors import ConfigError, did_you_mean
from gdpo_megatron.config.scoring import ScoringConfig

from ._reward_worker import import_rewards, worker_main
from .outcomes import EVENTS
from .registry import REWARDS

log = logging.getLogger(__name__)

# Failure kinds reported by the worker -> their counter; any other failure is reward_errors.
_FAILURE_COUNTERS = {"refused": "reward_refusals", "sandbox_failure": "reward_sandbox_failures",
                     "out_of_range": "reward_out_of_range"}
_EVENT_COUNTERS = {event: f"reward_{event}" for event in EVENTS}


@dataclass
class RewardBatch:
    values: torch.Tensor  # [N, K] float32; NaN where a reward does not apply, failed or timed out
    metrics: dict[str, float]
    names: list[str] = field(default_factory=list)


class _Worker:
    def __init__(self, context, modules: list[str]) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child, modules), daemon=True,
                                       name="gdpo-reward-worker")
        self.process.start()
        child.close()
        self.queue: deque = deque()
        self.current: Optional[tuple] = None
        self.started_at = 0.0

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the worker imported the rewards, so start-up never counts against a call's timeout."""
        if not self.conn.poll(timeout_s):
            self.kill()
            raise RuntimeError(f"reward worker did not start within {timeout_s} s")
        try:
            status, detail = self.conn.recv()
        except EOFError:
            status, detail = "import-error", f"exit code {self.process.exitcode}"
        if status != "ready":
            self.kill()
            raise RuntimeError(f"reward worker failed to start: {detail} (check scoring.reward_modules)")

    def send_next(self) -> None:
        self.current = self.queue.popleft()
        self.started_at = time.monotonic()
        self.conn.send(self.current)

    def kill(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.kill()
        else:
            self.conn.close()


class RewardRunner:
    """`RewardRunner(specs, scoring).score(records, responses, num_tokens) -> RewardBatch`."""

    def __init__(self, specs: list[RewardSpec], scoring: ScoringConfig) -> None:
        import_rewards(scoring.reward_modules)
        for i, spec in enumerate(specs):
            if spec.function_name not in REWARDS:
                raise ConfigError(f"algorithm.rewards[{i}].function: unknown reward {spec.function_name!r}"
                                  f"{did_you_mean(spec.function_name, REWARDS)}; registered: {', '.join(REWARDS.names())}")
        self.specs = list(specs)
        self.scoring = scoring
        self._context = mp.get_context(scoring.start_method)
        self._workers: list[_Worker] = []
        self._logged: dict[str, int] = {spec.name: 0 for spec in self.specs}
        self.workers_replaced = 0

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.specs]

    def _ensure_workers(self) -> None:
        fresh = [_Worker(self._context, self.scoring.reward_modules)
                 for _ in range(self.scoring.num_workers - len(self._workers))]
        for worker in fresh:
            worker.wait_ready()
        self._workers.extend(fresh)

    def _replace(self, index: int) -> None:
        old = self._workers[index]
        old.kill()
        new = _Worker(self._context, self.scoring.reward_modules)
        new.wait_ready()
        new.queue = old.queue
        self._workers[index] = new
        self.workers_replaced += 1

    def _log_failure(self, kind: str, name: str, record: dict, detail: str) -> None:
        if self._logged[name] < self.scoring.max_logged_errors:
            self._logged[name] += 1
            log.warning("reward %r %s on record %r: %s", name, kind, record.get("id"), detail)

    def score(self, records: list[dict], responses: list[str], num_tokens: list[int]) -> RewardBatch:
        n, k = len(records), len(self.specs)
        if not (len(responses) == n and len(num_tokens) == n):
            raise ValueError(f"score(): {n} records, {len(responses)} responses, {len(num_tokens)} token counts")
        started = time.monotonic()
        values = torch.full((n, k), math.nan, dtype=torch.float32)
        errors = [0] * k
        timeouts = [0] * k
        counted = {key: [0] * k for key in (*_FAILURE_COUNTERS.values(), *_EVENT_COUNTERS.values())}
        self._ensure_workers()
        for i in range(n):
            # One worker per rollout keeps its rewards together (code rewards share sandbox runs).
            worker = self._workers[i % len(self._workers)]
            for j, spec in enumerate(self.specs):
                worker.queue.append((i * k + j, spec.function_name, records[i], responses[i],
                                     int(num_tokens[i]), dict(spec.args)))
        for worker in self._workers:
            if worker.queue:
                worker.send_next()

        while any(w.current is not None for w in self._workers):
            busy = [w for w in self._workers if w.current is not None]
            now = time.monotonic()
            next_deadline = min(w.started_at for w in busy) + self.scoring.timeout_s
            ready = wait([w.conn for w in busy], timeout=max(next_deadline - now, 0.0))
            for index, worker in enumerate(list(self._workers)):
                if worker.current is None:
                    continue
                task_id = worker.current[0]
                i, j = divmod(task_id, k)
                name = self.specs[j].name
                if worker.conn in ready:
                    events: dict = {}
                    try:
                        _, status, payload, events = worker.conn.recv()
                    except (EOFError, OSError):
                        status, payload = "crash", f"worker process died (exit code {worker.process.exitcode})"
                    for event, count in events.items():
                        counted[_EVENT_COUNTERS[event]][j] += count
                    if status == "ok":
                        values[i, j] = payload
                    elif status in _FAILURE_COUNTERS:
                        counted[_FAILURE_COUNTERS[status]][j] += 1
                        self._log_failure(status.replace("_", " "), name, records[i], payload)
                    else:
                        errors[j] += 1
                        self._log_failure("failed", name, records[i], payload)
                    if status == "crash":
                        self._replace(index)
                        worker = self._workers[index]
                elif time.monotonic() - worker.started_at >= self.scoring.timeout_s:
                    timeouts[j] += 1
                    self._log_failure("timed out", name, records[i], f"no result within {self.scoring.timeout_s} s")
                    self._replace(index)
                    worker = self._workers[index]
                else:
                    continue
                worker.current = None
                if worker.queue:
                    worker.send_next()

        # Counters of this call only: the trainer adds them up over a step's sampling rounds.
        # Reward means are the trainer's (on the step's final batch, conditions applied).
        metrics: dict[str, float] = {"time/reward_scoring": time.monotonic() - started}
        for j, name in enumerate(self.names):
            metrics[f"reward_errors/{name}"] = float(errors[j])
            metrics[f"reward_timeouts/{name}"] = float(timeouts[j])
            metrics[f"reward_nan/{name}"] = float(torch.isnan(values[:, j]).sum())
            metrics.update({f"{key}/{name}": float(counts[j]) for key, counts in counted.items()})
        return RewardBatch(values=values, metrics=metrics, names=self.names)

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __enter__(self) -> "RewardRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
