"""Run untrusted Python in a contained child process; see docs/sandbox.md.

Isolation, strongest available first (detected once per process, `SandboxLimits.isolation`):

- "namespaces" (host root): `unshare --net --pid --mount --mount-proc --fork`, then the
  child drops to a uid leased for this run alone. No network (empty network namespace),
  private tmpfs /tmp, /var/tmp, /dev/shm (the working dir lives there and disappears with
  the namespace), every process of the run dies with the pid namespace, and RLIMIT_NPROC
  holds because the uid is not root and no other process uses it.
- "userns" (unprivileged host user): the same namespaces inside a new user namespace;
  RLIMIT_NPROC is counted per user namespace, so it holds without a uid change.
- "rlimits" (no `unshare`): resource limits, a socket-blocking audit hook, a uid drop when
  root, and a kill sweep of that uid afterwards. Weaker: documented in docs/sandbox.md.

Every mode: wall-clock timeout, CPU-time, address-space, process-count, file-size and
open-file limits, a minimal environment, capped stdout/stderr, a fresh working dir.
"""

from __future__ import annotations

import fcntl
import functools
import json
import math
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

Isolation = Literal["auto", "namespaces", "userns", "rlimits"]

_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
_SETUP_FAILED = 121
_UID_BASE = 2_000_000_000  # far above any real account; uids need not exist in /etc/passwd
_UID_SLOTS = 1 << 16
_UID_LOCK_DIR = Path(tempfile.gettempdir()) / "gdpo-sandbox-uids"
_MINIMAL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not a failure of the program)."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_time_s: float = 10.0  # whole run, including interpreter start (~50 ms)
    cpu_time_s: float = 10.0  # RLIMIT_CPU, whole seconds (rounded up); SIGXCPU then SIGKILL
    memory_mb: int = 1024  # RLIMIT_AS (virtual address space) of each process
    max_processes: int = 16  # RLIMIT_NPROC (threads count too)
    max_output_bytes: int = 1 << 20  # per stream; more and the run is killed
    max_file_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    max_open_files: int = 64
    tmpfs_mb: int = 64  # size of the private /tmp in namespace modes
    isolation: Isolation = "auto"


@dataclass
class SandboxResult:
    returncode: Optional[int]  # negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool  # the wall-clock limit expired
    killed_reason: Optional[str]  # wall_time, cpu_time, output_limit, signal:<NAME>; None if it exited
    wall_time_s: float
    isolation: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.killed_reason is None


def _probe(args: list[str]) -> bool:
    try:
        return subprocess.run(args + ["true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=None)
def available_isolation() -> str:
    """The strongest isolation this host allows (probed once per process)."""
    unshare = shutil.which("unshare")
    if unshare:
        if os.geteuid() == 0 and _probe(_namespace_prefix("namespaces")):
            return "namespaces"
        if _probe(_namespace_prefix("userns")):
            return "userns"
    return "rlimits"


def _namespace_prefix(mode: str) -> list[str]:
    base = [shutil.which("unshare") or "unshare", "--net", "--pid", "--mount", "--mount-proc",
            "--fork", "--kill-child"]
    if mode == "userns":
        base[1:1] = ["--user", "--map-root-user"]
    return base + ["--"]


class _UidLease:
    """A uid used by exactly one sandbox at a time, across threads and processes (flock)."""

    def __init__(self) -> None:
        _UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        start = random.randrange(_UID_SLOTS)
        for i in range(_UID_SLOTS):
            slot = (start + i) % _UID_SLOTS
            fd = os.open(_UID_LOCK_DIR / f"{slot}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.fd, self.uid = fd, _UID_BASE + slot
            return
        raise SandboxError("no free sandbox uid")

    def release(self) -> None:
        os.close(self.fd)


def _rlimits(limits: SandboxLimits) -> dict[str, list[int]]:
    cpu = max(1, math.ceil(limits.cpu_time_s))
    memory = limits.memory_mb << 20
    return {
        "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_AS": [memory, memory],
        "RLIMIT_NPROC": [limits.max_processes, limits.max_processes],
        "RLIMIT_FSIZE": [limits.max_file_mb << 20, limits.max_file_mb << 20],
        "RLIMIT_NOFILE": [limits.max_open_files, limits.max_open_files],
        "RLIMIT_CORE": [0, 0],
    }


def _kill_uid(uid: int) -> None:
    """Without a pid namespace: kill every process of the run's uid (kill(-1) as that uid)."""
    subprocess.run([sys.executable, "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
                   user=uid, group=uid, extra_groups=[], capture_output=True, timeout=10, env=_MINIMAL_ENV)


def _feed_stdin(pipe, data: bytes) -> None:
    try:
        if data:
            pipe.write(data)
        pipe.close()
    except (BrokenPipeError, OSError):
        pass  # the program exited or closed stdin without reading it all


def run_sandboxed(code: str, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run Python `code` as __main__ with `stdin`; a failure of the program is a result, never an exception.

    Raises SandboxError only when the sandbox itself cannot start (e.g. mounts refused).
    """
    mode = available_isolation() if limits.isolation == "auto" else limits.isolation
    staging = tempfile.mkdtemp(prefix="gdpo-sbx-")
    lease = _UidLease() if os.geteuid() == 0 and mode in ("namespaces", "rlimits") else None
    try:
        os.chmod(staging, 0o700 if mode != "rlimits" else 0o755)
        Path(staging, "prog.py").write_text(code, encoding="utf-8")
        spec = {
            "private_tmp": mode != "rlimits",
            "tmpfs_mb": limits.tmpfs_mb,
            "uid": lease.uid if lease else None,
            "rlimits": _rlimits(limits),
            "block_sockets": True,
        }
        Path(staging, "spec.json").write_text(json.dumps(spec))
        prefix = _namespace_prefix(mode) if mode != "rlimits" else []
        result = _execute(prefix + [sys.executable, "-I", "-S", _CHILD, staging], stdin.encode("utf-8"), limits, mode)
        if lease is not None and mode == "rlimits":
            _kill_uid(lease.uid)
        if result.returncode == _SETUP_FAILED and "gdpo-sandbox-setup-error" in result.stderr:
            raise SandboxError(f"sandbox set-up failed ({mode}): {result.stderr.strip()}")
        return result
    finally:
        if lease is not None:
            lease.release()
        shutil.rmtree(staging, ignore_errors=True)


def _execute(command: list[str], stdin: bytes, limits: SandboxLimits, mode: str) -> SandboxResult:
    start = time.monotonic()
    status_read, status_write = os.pipe()
    try:
        proc = subprocess.Popen(command + [str(status_write)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(_MINIMAL_ENV), start_new_session=True,
                                close_fds=True, pass_fds=(status_write,))
    finally:
        os.close(status_write)
    feeder = threading.Thread(target=_feed_stdin, args=(proc.stdin, stdin), daemon=True)
    feeder.start()
    buffers = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    truncated = {proc.stdout: False, proc.stderr: False}
    killed_reason = None
    deadline = start + limits.wall_time_s
    with selectors.DefaultSelector() as selector:
        for pipe in buffers:
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                killed_reason = "wall_time"
                break
            for key, _ in selector.select(timeout=min(remaining, 0.5)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = buffers[key.fileobj]
                room = limits.max_output_bytes - len(buffer)
                buffer += chunk[:max(room, 0)]
                if len(chunk) > room:
                    truncated[key.fileobj] = True
                    killed_reason = "output_limit"
            if killed_reason:
                break
    if killed_reason is None:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            killed_reason = "wall_time"
    if killed_reason is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launcher_code = proc.wait()
    returncode = _program_status(status_read, launcher_code)
    feeder.join(timeout=1)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            pipe.close()
        except OSError:
            pass
    if killed_reason is None and returncode < 0:
        signum = -returncode
        killed_reason = "cpu_time" if signum == signal.SIGXCPU else f"signal:{signal.Signals(signum).name}"
    return SandboxResult(
        returncode=returncode,
        stdout=buffers[proc.stdout].decode("utf-8", errors="replace"),
        stderr=buffers[proc.stderr].decode("utf-8", errors="replace"),
        timed_out=killed_reason == "wall_time",
        killed_reason=killed_reason,
        wall_time_s=time.monotonic() - start,
        isolation=mode,
        stdout_truncated=truncated[proc.stdout],
        stderr_truncated=truncated[proc.stderr],
    )


def _program_status(status_read: int, launcher_code: int) -> int:
    """The program's own exit status (negative: its signal), as the launcher saw it."""
    with os.fdopen(status_read, "rb") as pipe:
        report = pipe.read()
    if not report:
        return launcher_code  # killed before the program ended (timeout, output limit) or set-up failed
    return os.waitstatus_to_exitcode(json.loads(report)["wait_status"])

