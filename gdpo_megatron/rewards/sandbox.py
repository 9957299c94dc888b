"""Run untrusted Python in a contained set of processes; see docs/sandbox.md.

`run_sandboxed(code, stdin, limits)` runs a program to its end; `Sandbox(code, limits)` is the
same run held open for a line-based conversation over stdin/stdout (function-style tests).

Isolation modes (`SandboxLimits.isolation`), never downgraded silently:

- "namespaces" (the default; needs root or CAP_SYS_ADMIN, and a container runtime that allows
  unshare and mount): fresh pid, mount, network, IPC and UTS namespaces; a read-only root
  holding only the interpreter, its stdlib and the shared libraries they load, plus a
  size-capped writable /work; a uid leased for this run alone; a memory cgroup for the whole
  run where the host delegates one.
- "rlimits" (opt in by name; needs root, refused otherwise): the same leased uid, rlimits,
  seccomp filter (no socket(2) of any family, AF_UNIX included, even through raw system calls)
  and cgroup, but the host's filesystem, /proc and SysV IPC stay visible to whatever that uid
  may read; the run gets a process group of its own, killed with it, and a kill sweep of its
  uid. Without root the program would run as the trainer's own uid (able to read the
  checker's files and the dataset, and to outlive its run), so that is not offered.

Lifetime: the trusted launcher (_sandbox_child.py) dies with the thread that started it
(PR_SET_PDEATHSIG) and then kills the whole run; the uid lease is held by the launcher too,
so it is free again only once every process of the run is gone.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import math
import os
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

log = logging.getLogger(__name__)

Isolation = Literal["namespaces", "rlimits"]
ISOLATION_MODES = ("namespaces", "rlimits")

_CHILD = str(Path(__file__).with_name("_sandbox_child.py"))
_PYTHON = os.path.realpath(sys.executable)  # the base interpreter: a venv's packages never enter the sandbox
_UID_BASE = 2_000_000_000  # far above any real account; uids need not exist in /etc/passwd
_UID_SLOTS = 1 << 16
_UID_LOCK_DIR = Path(tempfile.gettempdir()) / "gdpo-sandbox-uids"
_MINIMAL_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/work", "TMPDIR": "/work",
                "PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8"}
_GUARD_EXIT_S = 5.0
_quarantined_leases: list = []  # leases whose run could not be confirmed dead: never reused


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up or did not start (not a failure of the program)."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_time_s: float = 10.0  # from the program's first line (interpreter start-up excluded)
    cpu_time_s: float = 10.0  # RLIMIT_CPU per process, whole seconds (rounded up); SIGXCPU
    memory_mb: int = 1024  # the whole run (cgroup) and RLIMIT_AS of each process
    max_processes: int = 16  # RLIMIT_NPROC of the run's own uid (threads count too)
    max_output_bytes: int = 1 << 20  # per stream; more and the run is killed
    max_file_mb: int = 16  # RLIMIT_FSIZE: largest file the program may write
    max_open_files: int = 64
    tmpfs_mb: int = 64  # size of the writable /work (namespaces mode)
    startup_timeout_s: float = 60.0  # launcher start-up on a loaded host; overrun is a SandboxError
    isolation: Isolation = "namespaces"


@dataclass
class SandboxResult:
    returncode: Optional[int]  # negative: killed by that signal; None: ended before the program reported
    stdout: str
    stderr: str
    timed_out: bool  # the wall-clock limit expired
    killed_reason: Optional[str]  # wall_time, cpu_time, memory, output_limit, signal:<NAME>, stopped
    wall_time_s: float  # from the program's start
    isolation: str
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    memory_exceeded: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and self.killed_reason is None


def memory_bound(limits: "SandboxLimits") -> str:
    """What bounds a run's memory on this host, in words (logged and printed by reward workers)."""
    parent = memory_cgroup_parent()
    if parent:
        return "cgroup v%d for the whole run" % parent[0]
    return f"no delegated cgroup: {limits.memory_mb} MiB per process, at most {limits.max_processes} processes"


def check_isolation(mode: object) -> None:
    """SandboxError unless `mode` is a mode this process may run (a known name; rlimits only as root)."""
    if mode not in ISOLATION_MODES:
        raise SandboxError(f"isolation must be one of {ISOLATION_MODES}, got {mode!r}")
    if mode == "rlimits" and os.geteuid() != 0:
        raise SandboxError(
            "isolation: rlimits needs root (euid 0), this process runs as uid %d: without root the program "
            "would run as the trainer's own uid, able to read the checker's tests and the dataset and to "
            "outlive its run; use isolation: namespaces (root or CAP_SYS_ADMIN), or run the reward "
            "workers as root (docs/sandbox.md)" % os.geteuid())


@functools.lru_cache(maxsize=None)
def _log_mode(mode: str, memory_bound: str) -> None:
    if mode == "namespaces":
        log.info("sandbox isolation: namespaces (memory: %s)", memory_bound)
    else:
        log.warning("sandbox isolation: %s (opted in; weaker containment, see docs/sandbox.md; memory: %s)",
                    mode, memory_bound)


def _can_make_cgroup(version: int, directory: str) -> bool:
    probe = Path(directory, f"gdpo-sbx-probe-{os.getpid()}")
    try:
        probe.mkdir()
        try:
            Path(probe, "memory.max" if version == 2 else "memory.limit_in_bytes").write_text(str(64 << 20))
        finally:
            probe.rmdir()
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def memory_cgroup_parent() -> Optional[tuple[int, str]]:
    """(cgroup version, directory) under which each run gets its own memory cgroup, or None
    (then a run's memory is bounded by RLIMIT_AS x max_processes; the log says which)."""
    found = _find_memory_cgroup()
    return found if found and _can_make_cgroup(*found) else None


def _find_memory_cgroup() -> Optional[tuple[int, str]]:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    entries = [line.split(":", 2) for line in lines if line.count(":") >= 2]
    unified = next((path for hid, ctl, path in entries if hid == "0" and ctl == ""), None)
    if unified is not None and Path("/sys/fs/cgroup/cgroup.controllers").exists():
        directory = "/sys/fs/cgroup" + unified.rstrip("/")
        try:
            if "memory" in Path(directory, "cgroup.subtree_control").read_text().split() and os.access(directory, os.W_OK):
                return 2, directory
        except OSError:
            pass
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            directory = "/sys/fs/cgroup/memory" + path.rstrip("/")
            if Path(directory, "memory.limit_in_bytes").exists() and os.access(directory, os.W_OK):
                return 1, directory
    return None


class _UidLease:
    """A uid used by exactly one sandbox at a time, across threads and processes (flock)."""

    def __init__(self) -> None:
        _UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
        start = random.randrange(_UID_SLOTS)
        for i in range(_UID_SLOTS):
            slot = (start + i) % _UID_SLOTS
            fd = os.open(_UID_LOCK_DIR / f"{slot}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
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


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


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


class Sandbox:
    """One sandboxed run of `code`; use as a context manager, then read `result()`.

    `send(data)`, `readline(timeout_s)` and `close_stdin()` talk to the program; `wait()` lets
    it finish; leaving the `with` block (or `stop()`) kills every process of the run.
    """

    def __init__(self, code: str, limits: SandboxLimits = SandboxLimits()) -> None:
        check_isolation(limits.isolation)
        self.limits, self.mode = limits, limits.isolation
        cgroup_parent = memory_cgroup_parent()
        _log_mode(self.mode, memory_bound(limits))
        # rlimits is root-only (check_isolation); namespaces without root fails at unshare.
        self.lease = _UidLease() if os.geteuid() == 0 else None
        self.staging = tempfile.mkdtemp(prefix="gdpo-sbx-")
        self.cgroup = ({"version": cgroup_parent[0], "path": f"{cgroup_parent[1]}/{Path(self.staging).name}"}
                       if cgroup_parent else None)
        self._stdout, self._stderr = bytearray(), bytearray()
        self._truncated = {"stdout": False, "stderr": False}
        self._pending_stdin = bytearray()
        self._stdin_closing = False
        self._status = bytearray()
        self._events: dict[str, dict] = {}
        self.killed_reason: Optional[str] = None
        self._launched = time.monotonic()
        self.started_at: Optional[float] = None
        self._ended_at: Optional[float] = None
        self._finished = False
        self._guard_exited = False
        self.proc: Optional[subprocess.Popen] = None
        try:
            self._launch(code)
        except BaseException:
            self._cleanup(confirmed_dead=self.proc is None)
            raise

    # ---- start -----------------------------------------------------------------------------

    def _launch(self, code: str) -> None:
        os.chmod(self.staging, 0o700 if self.mode == "namespaces" else 0o711)
        # 0600: in rlimits mode other runs see the host's /tmp (and this path in the launcher's
        # command line); only root and the launcher read the program, its tests or its spec.
        _write_private(Path(self.staging, "prog.py"), code)
        spec = {"mode": self.mode, "uid": self.lease.uid if self.lease else None, "rlimits": _rlimits(self.limits),
                "tmpfs_mb": self.limits.tmpfs_mb, "cgroup": self.cgroup, "memory_bytes": self.limits.memory_mb << 20}
        _write_private(Path(self.staging, "spec.json"), json.dumps(spec))
        status_read, status_write = os.pipe()
        self._status_fd = status_read
        try:
            self.proc = subprocess.Popen(
                [_PYTHON, "-I", "-S", _CHILD, self.staging, str(os.getpid()), str(status_write)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(_MINIMAL_ENV),
                start_new_session=True, close_fds=True,
                pass_fds=(status_write,) + ((self.lease.fd,) if self.lease else ()))
        finally:
            os.close(status_write)
        self._selector = selectors.DefaultSelector()
        for fd in (self.proc.stdout.fileno(), self.proc.stderr.fileno(), status_read):
            os.set_blocking(fd, False)
            self._selector.register(fd, selectors.EVENT_READ)
        os.set_blocking(self.proc.stdin.fileno(), False)

    # ---- conversation ----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._pending_stdin += data
        self._pump(0.0)

    def close_stdin(self) -> None:
        self._stdin_closing = True
        self._pump(0.0)

    def readline(self, timeout_s: Optional[float] = None) -> Optional[bytes]:
        """The program's next stdout line, or None if it ended, was killed, or `timeout_s` passed."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def has_line() -> bool:
            return b"\n" in self._stdout

        self._pump_until(has_line, deadline)
        if not has_line():
            return None
        end = self._stdout.index(b"\n") + 1
        line = bytes(self._stdout[:end])
        # A conversation drops what it has read: max_output_bytes then bounds one pending reply,
        # not the sum of all of them (`result().stdout` holds only what was never read).
        del self._stdout[:end]
        return line

    def wait_started(self) -> None:
        """Until the program's first line is about to run (SandboxError if the launcher fails first)."""
        self._pump_until(lambda: self.started_at is not None or "setup_error" in self._events, None)
        if self.started_at is None:
            self.stop()  # raises SandboxError for a set-up failure or a start-up overrun
            raise SandboxError("sandbox ended before the program started")

    def wait(self, timeout_s: Optional[float] = None) -> None:
        """Until the program's outputs close and the launcher reported the end (or a limit hits)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._pump_until(lambda: False, deadline)

    @property
    def running(self) -> bool:
        return not self._finished and "exit" not in self._events and self.killed_reason is None

    # ---- the pump --------------------------------------------------------------------------

    def _limit_deadline(self) -> float:
        if self.started_at is None:
            return self._launched + self.limits.startup_timeout_s
        return self.started_at + self.limits.wall_time_s

    def _pump_until(self, done, deadline: Optional[float]) -> None:
        while not done() and self._selector.get_map() and self.killed_reason is None:
            now = time.monotonic()
            limit = self._limit_deadline()
            if now >= limit:
                self._kill("wall_time" if self.started_at is not None else "startup")
                break
            if deadline is not None and now >= deadline:
                break
            self._pump(min(limit, deadline if deadline is not None else limit) - now)

    def _pump(self, timeout: float) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.closed:
            want_write = bool(self._pending_stdin)
            key = self._selector.get_map().get(stdin.fileno())
            if want_write and key is None:
                self._selector.register(stdin.fileno(), selectors.EVENT_WRITE)
            elif not want_write and key is not None:
                self._selector.unregister(stdin.fileno())
            if not want_write and self._stdin_closing:
                stdin.close()
        if not self._selector.get_map():
            return
        for key, _ in self._selector.select(timeout=max(timeout, 0.0)):
            fd = key.fd
            if stdin is not None and not stdin.closed and fd == stdin.fileno():
                try:
                    written = os.write(fd, self._pending_stdin[:65536])
                    del self._pending_stdin[:written]
                except (BrokenPipeError, OSError):
                    self._pending_stdin.clear()
                    self._selector.unregister(fd)
                    stdin.close()
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self._selector.unregister(fd)
                continue
            if fd == self._status_fd:
                self._status += chunk
                self._parse_status()
            else:
                name = "stdout" if fd == self.proc.stdout.fileno() else "stderr"
                buffer = self._stdout if name == "stdout" else self._stderr
                room = self.limits.max_output_bytes - len(buffer)
                buffer += chunk[:max(room, 0)]
                if len(chunk) > room:
                    self._truncated[name] = True
                    self._kill("output_limit")

    def _parse_status(self) -> None:
        while b"\n" in self._status:
            line, _, rest = bytes(self._status).partition(b"\n")
            self._status = bytearray(rest)
            event = json.loads(line)
            self._events[event["event"]] = event
            if event["event"] == "started":
                self.started_at = time.monotonic()
            elif event["event"] == "exit":
                self._ended_at = time.monotonic()

    # ---- end -------------------------------------------------------------------------------

    def _kill(self, reason: str) -> None:
        if self.killed_reason is None and "exit" not in self._events:
            self.killed_reason = reason
            self._ended_at = time.monotonic()
        self._guard_exited = self._stop_guard(terminate=True)

    def _stop_guard(self, terminate: bool) -> bool:
        """Wait for the launcher to exit (after SIGTERM, which makes it kill the run, when `terminate`);
        True once it has exited by itself, so that every process of the run is known to be gone."""
        if self.proc.poll() is not None:
            return self._guard_exited
        if terminate:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=_GUARD_EXIT_S)
            return True
        except subprocess.TimeoutExpired:
            self.proc.kill()  # init follows through its death signal, asynchronously
            self.proc.wait()
            return False

    def stop(self) -> None:
        if self._finished:
            return
        if self.running:
            self._kill("stopped")
        else:
            self._guard_exited = self._stop_guard(terminate="done" not in self._events)
        deadline = time.monotonic() + 1.0
        while self._selector.get_map() and time.monotonic() < deadline:  # the launcher's last reports
            self._pump(0.05)
        self._finished = True
        self._cleanup(confirmed_dead=self._guard_exited and ("done" in self._events or self.proc.returncode == 121))
        if "setup_error" in self._events:
            raise SandboxError(f"sandbox set-up failed ({self.mode}): {self._events['setup_error']['message']}"
                               + (" (a host that cannot create namespaces may opt in to isolation: rlimits)"
                                  if self.mode == "namespaces" else ""))
        if self.killed_reason == "startup":
            raise SandboxError(f"sandbox did not start within {self.limits.startup_timeout_s} s")

    def _cleanup(self, confirmed_dead: bool) -> None:
        if hasattr(self, "_selector"):
            self._selector.close()
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass
        if hasattr(self, "_status_fd"):
            os.close(self._status_fd)
        if self.cgroup:
            try:
                os.rmdir(self.cgroup["path"])
            except OSError:
                pass
        if self.lease is not None:
            if confirmed_dead:
                self.lease.release()
            else:
                _quarantined_leases.append(self.lease)
        shutil.rmtree(self.staging, ignore_errors=True)

    def result(self) -> SandboxResult:
        if not self._finished:
            self.stop()
        exit_event = self._events.get("exit")
        returncode = os.waitstatus_to_exitcode(exit_event["wait_status"]) if exit_event else None
        memory_exceeded = bool(self._events.get("done", {}).get("memory_exceeded"))
        reason = self.killed_reason
        if reason is None and returncode is not None and returncode < 0:
            signum = -returncode
            if signum == signal.SIGXCPU:
                reason = "cpu_time"
            elif signum == signal.SIGKILL and memory_exceeded:
                reason = "memory"
            else:
                reason = f"signal:{signal.Signals(signum).name}"
        start = self.started_at if self.started_at is not None else self._launched
        end = self._ended_at if self._ended_at is not None else time.monotonic()
        return SandboxResult(
            returncode=returncode,
            stdout=self._stdout.decode("utf-8", errors="replace"),
            stderr=self._stderr.decode("utf-8", errors="replace"),
            timed_out=reason == "wall_time", killed_reason=reason, wall_time_s=end - start, isolation=self.mode,
            stdout_truncated=self._truncated["stdout"], stderr_truncated=self._truncated["stderr"],
            memory_exceeded=memory_exceeded)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_sandboxed(code: str, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run Python `code` as __main__ with `stdin` to its end; a failure of the program is a result.

    Raises SandboxError only when the sandbox itself cannot start.
    """
    with Sandbox(code, limits) as sandbox:
        sandbox.send(stdin.encode("utf-8"))
        sandbox.close_stdin()
        sandbox.wait()
    return sandbox.result()
