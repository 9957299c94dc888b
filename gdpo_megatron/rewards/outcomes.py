"""How a reward call can end besides returning a value, and what the runner counts for each.

- `RewardRefused`: the record's data is in a form the reward cannot score with its
  guarantees (e.g. code tests that would have to trust the program): NaN, counted as a refusal.
- `RewardOutOfRange`: a value outside the reward's declared range (`value_range`), a bug in
  the reward: raises where the reward is called directly (tests), NaN and counted in training.
- events (`count_event`): things that happened during a call that still produced a value,
  e.g. a sandboxed program stopped at its time limit; the runner sums them per reward.
Sandbox set-up failures are `sandbox.SandboxError`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections import Counter
from typing import Callable, Iterator

EVENTS = ("program_timeouts",)
_local = threading.local()


class RewardRefused(ValueError):
    """The record cannot be scored by this reward without giving up a guarantee."""


class RewardOutOfRange(ArithmeticError):
    """A reward returned a value outside its declared range."""


def value_range(low: float, high: float) -> Callable:
    """Declare a reward's range; a finite value outside [low, high] raises RewardOutOfRange."""

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def bounded(*args, **kwargs):
            value = fn(*args, **kwargs)
            if value is not None and not math.isnan(value) and not low <= value <= high:
                raise RewardOutOfRange(f"reward {fn.__name__} returned {value}, outside its range [{low}, {high}]")
            return value

        bounded.value_range = (low, high)
        return bounded

    return decorator


def count_event(name: str) -> None:
    if name not in EVENTS:
        raise ValueError(f"unknown reward event {name!r}; known: {', '.join(EVENTS)}")
    counter = getattr(_local, "events", None)
    if counter is not None:
        counter[name] += 1


@contextlib.contextmanager
def collect_events() -> Iterator[Counter]:
    """The events counted by reward calls in this thread inside the block."""
    previous = getattr(_local, "events", None)
    _local.events = Counter()
    try:
        yield _local.events
    finally:
        _local.events = previous
