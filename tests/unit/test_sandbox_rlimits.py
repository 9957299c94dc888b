"""The weaker `rlimits` mode: refused without root; as root, no socket of any family, a run
that dies with its caller and its timeout (process group, uid sweep, the program's own death
signal), and a host filesystem view limited to what other users may read."""

import os
import signal
import socket
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from gdpo_megatron.rewards import REWARDS
from gdpo_megatron.rewards.sandbox import ISOLATION_MODES, Sandbox, SandboxError, SandboxLimits, run_sandboxed
from gdpo_megatron.rewards.sandbox_preflight import unavailable_reason
from helpers.processes import live_processes_named  # noqa: E402

needs_rlimits = pytest.mark.skipif(unavailable_reason("rlimits") is not None,
                                   reason=str(unavailable_reason("rlimits")))
RLIMITS = SandboxLimits(wall_time_s=10.0, cpu_time_s=5.0, memory_mb=256, max_processes=8, isolation="rlimits")


def _wait_gone(marker: str, within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while live_processes_named(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    return live_processes_named(marker)


def test_rlimits_is_refused_without_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match=r"isolation: rlimits needs root \(euid 0\), this process runs as uid 1000"
                                           r".*trainer's own uid"):
        Sandbox("pass", SandboxLimits(isolation="rlimits"))
    record = {"id": "r", "tests": {"style": "stdin", "cases": [{"input": "", "output": "1"}]}}
    with pytest.raises(SandboxError, match="needs root"):  # through the reward: a sandbox failure, never a run
        REWARDS.get("code_pass")(record, "print(1)", 0, isolation="rlimits")


@pytest.mark.parametrize("mode", ISOLATION_MODES)
def test_no_unix_socket_reaches_the_host(mode, monkeypatch):
    reason = unavailable_reason(mode)
    if reason is not None:
        pytest.skip(reason)
    # A host service listening on a socket file anyone may connect to (as Ray's raylet does).
    directory = tempfile.mkdtemp(prefix="gdpo-unix-")
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "service.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(1)
    server.settimeout(3)
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(_accept(server)))
    thread.start()
    code = textwrap.dedent(f"""
        import ctypes, struct
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(1, 1, 0)
        print('socket', fd, ctypes.get_errno())
        if fd >= 0:
            address = struct.pack('<H108s', 1, {path.encode()!r})
            print('connect', libc.connect(fd, address, len(address)))
        pair = (ctypes.c_int * 2)()
        print('socketpair', libc.socketpair(1, 1, 0, pair))  # reaches nothing: allowed
    """)
    try:
        result = run_sandboxed(code, limits=SandboxLimits(wall_time_s=10.0, isolation=mode))
    finally:
        thread.join()
        server.close()
        os.unlink(path)
        os.rmdir(directory)
    assert result.ok, result.stderr
    assert accepted == [None]
    lines = result.stdout.splitlines()
    if mode == "rlimits":  # the host's sockets are in view: socket(2) itself is refused (EACCES)
        assert lines == ["socket -1 13", "socketpair 0"]
    else:  # a private root and network namespace: no host socket can be named
        assert lines[0].startswith("socket ") and lines[1] == "connect -1" and lines[2] == "socketpair 0"


def _accept(server):
    try:
        return server.accept()
    except OSError:
        return None


@needs_rlimits
def test_timeout_kills_the_group_and_children_that_left_it():
    marker = f"gdr{os.getpid() % 100000}"
    name = f"ctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)"
    code = (f"import ctypes, os, signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"if os.fork() == 0:\n    {name}\n    time.sleep(60)\n"  # stays in the run's group
            f"if os.fork() == 0:\n    os.setsid()\n    {name}\n    time.sleep(60)\n"  # leaves it
            "time.sleep(60)")
    started = time.monotonic()
    result = run_sandboxed(code, limits=SandboxLimits(wall_time_s=1.5, cpu_time_s=5.0, isolation="rlimits"))
    assert result.timed_out and time.monotonic() - started < 10
    assert _wait_gone(marker, 1.0) == []


@needs_rlimits
def test_the_program_dies_with_its_launcher():
    # Even when the guard itself is SIGKILLed (it cannot kill anything then): init follows it
    # through its death signal, and the program follows init through its own.
    marker = f"gdp{os.getpid() % 100000}"
    code = f"import ctypes, time\nctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)\ntime.sleep(60)"
    with Sandbox(code, SandboxLimits(wall_time_s=60.0, isolation="rlimits")) as sandbox:
        sandbox.wait_started()
        deadline = time.monotonic() + 10
        while not live_processes_named(marker) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(live_processes_named(marker)) == 1
        os.kill(sandbox.proc.pid, signal.SIGKILL)
        assert _wait_gone(marker, 1.0) == []


@needs_rlimits
def test_the_host_view_is_what_other_users_may_read():
    # Documented, not hidden: data and tests left world-readable are readable in this mode.
    private = tempfile.mkdtemp(prefix="gdpo-private-")  # 0700, root
    public = tempfile.mkdtemp(prefix="gdpo-public-")
    os.chmod(public, 0o755)
    Path(private, "tests.jsonl").write_text("expected-private")
    Path(public, "tests.jsonl").write_text("expected-public")
    os.chmod(Path(public, "tests.jsonl"), 0o644)
    Path(public, "secret.jsonl").write_text("expected-0600")
    os.chmod(Path(public, "secret.jsonl"), 0o600)
    code = textwrap.dedent(f"""
        for path in ({private + '/tests.jsonl'!r}, {public + '/tests.jsonl'!r}, {public + '/secret.jsonl'!r}):
            try:
                print(open(path).read())
            except OSError as exc:
                print('denied', exc.errno)
    """)
    try:
        result = run_sandboxed(code, limits=RLIMITS)
    finally:
        for directory in (private, public):
            for child in Path(directory).iterdir():
                child.unlink()
            os.rmdir(directory)
    assert result.ok, result.stderr
    assert result.stdout.splitlines() == ["denied 13", "expected-public", "denied 13"]
