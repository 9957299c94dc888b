"""Looking for a test's processes on this host by name (what a sandbox escape test checks)."""

from __future__ import annotations

import os
from pathlib import Path


def live_processes_named(marker: str) -> list[int]:
    """Pids of live processes whose name is `marker`.

    Zombies are left out: a killed process whose parent died waits, reparented to the host's
    pid 1, until that reaps it, and runs nothing meanwhile.
    """
    pids = []
    for pid in os.listdir("/proc"):
        try:
            if (pid.isdigit() and Path(f"/proc/{pid}/comm").read_text().strip() == marker
                    and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"):
                pids.append(int(pid))
        except OSError:
            pass
    return pids
