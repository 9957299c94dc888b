"""Check once, when a reward worker starts, that this host runs the sandbox each code reward asks for.

Without it a host that cannot create namespaces (a container runtime that forbids unshare or
mount, no root) or a non-root worker asking for `rlimits` fails every rollout at run time:
each one NaN, counted as a sandbox failure, and training goes on with no code reward at all.
"""

from __future__ import annotations

import sys

from .registry import REWARDS
from .sandbox import SandboxError, preflight


def sandbox_modes(specs) -> dict[str, list[str]]:
    """Isolation mode -> names of the rewards (RewardSpec) that run their programs in it."""
    modes: dict[str, list[str]] = {}
    for spec in specs:
        default = getattr(REWARDS.get(spec.function_name), "sandbox_isolation", None)
        if default is not None:
            modes.setdefault(spec.args.get("isolation", default), []).append(spec.name)
    return modes


def check_sandboxes(specs, stream=None) -> list[str]:
    """Run one trivial program per mode in use; raise SandboxError naming the rewards when the
    host cannot, else print (once per worker, to stderr: the console of a Ray actor) and return
    one line per mode. Training logs go nowhere for a worker, so this is a print."""
    lines = []
    for mode, names in sandbox_modes(specs).items():
        try:
            line = preflight(mode)
        except SandboxError as exc:
            raise SandboxError(f"rewards {', '.join(names)}: {exc}") from None
        warning = "WARNING: " if mode != "namespaces" else ""
        weaker = ("; weaker containment: the program sees the host's files that other users may read, "
                  "see docs/sandbox.md") if mode != "namespaces" else ""
        lines.append(f"gdpo rewards: {warning}{line} for {', '.join(names)}{weaker}")
    for line in lines:
        print(line, file=stream or sys.stderr, flush=True)
    return lines
