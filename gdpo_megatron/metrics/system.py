"""Process measurements for the metrics: phase timings and memory."""

from __future__ import annotations

import resource
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .keys import time_key


def rss_gb() -> float:
    """Current resident memory of this process in GiB (peak if /proc is unavailable)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        pages = int(statm.read_text().split()[1])
        return pages * resource.getpagesize() / 2**30
    # ru_maxrss is KiB on Linux, bytes on macOS; only reached off Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**30


class PhaseTimer:
    """Accumulates wall time per phase of a step: `with timer("generation"): ...`."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = self._clock()
        try:
            yield
        finally:
            self._totals[phase] = self._totals.get(phase, 0.0) + self._clock() - start

    def metrics(self) -> dict[str, float]:
        """`time/<phase>` for every timed phase; resets for the next step."""
        out = {time_key(phase): seconds for phase, seconds in self._totals.items()}
        self._totals = {}
        return out
