"""Process measurements for the metrics: resident memory."""

from __future__ import annotations

import resource
from pathlib import Path


def rss_gb() -> float:
    """Current resident memory of this process in GiB (peak if /proc is unavailable)."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        pages = int(statm.read_text().split()[1])
        return pages * resource.getpagesize() / 2**30
    # ru_maxrss is KiB on Linux, bytes on macOS; only reached off Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**30
