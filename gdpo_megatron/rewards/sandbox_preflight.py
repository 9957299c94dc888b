"""Check once, when a reward worker starts, that this host runs the sandbox each code reward asks for.

`preflight(mode)` runs a trivial program in one isolation mode; `check_sandboxes(specs)` does
it for every mode the configured rewards use and prints the modes in use.

Without it a host that cannot create namespaces (a container runtime that forbids unshare or
mount, no root) or a non-root worker asking for `rlimits` fails every rollout at run time:
each one NaN, counted as a sandbox failure, and training goes on with no code reward at all.
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from typing import Optional

from . import sandbox
from .registry import REWARDS
from .sandbox import SandboxError, SandboxLimits, check_isolation, memory_bound


def preflight(mode: str) -> str:
    """Run a trivial program in `mode` once; SandboxError saying why when this host cannot, else
    a line naming the mode and what bounds a run's memory."""
    check_isolation(mode)
    limits = SandboxLimits(wall_time_s=30.0, isolation=mode)
    try:
        result = sandbox.run_sandboxed("print('sandbox ok')", limits=limits)
    except SandboxError as exc:
        raise SandboxError(f"this host cannot run sandbox isolation {mode!r}: {exc} (docs/sandbox.md)") from None
    if not result.ok or result.stdout != "sandbox ok\n":
        raise SandboxError(f"this host cannot run sandbox isolation {mode!r}: a trivial program ended with "
                           f"{result.killed_reason or result.returncode}: {result.stderr[-500:]!r} (docs/sandbox.md)")
    return f"sandbox isolation: {mode} (memory: {memory_bound(limits)})"


@functools.lru_cache(maxsize=None)
def unavailable_reason(mode: str) -> Optional[str]:
    """Why this host cannot run `mode` (the preflight's error, cached), or None when it can."""
    try:
        preflight(mode)
        return None
    except SandboxError as exc:
        return str(exc)


def _isolation_default(function) -> Optional[str]:
    """The default of a reward's `isolation: Isolation` parameter: it runs programs in the sandbox."""
    parameter = inspect.signature(function).parameters.get("isolation")
    if parameter is None:
        return None
    try:
        hint = typing.get_type_hints(function).get("isolation")
    except Exception:  # noqa: BLE001 - a plugin's unresolvable annotations: not one of ours
        return None
    return parameter.default if hint == sandbox.Isolation else None


def sandbox_modes(specs) -> dict[str, list[str]]:
    """Isolation mode -> names of the rewards (RewardSpec) that run their programs in it."""
    modes: dict[str, list[str]] = {}
    for spec in specs:
        default = _isolation_default(REWARDS.get(spec.function_name))
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
