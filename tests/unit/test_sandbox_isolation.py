"""Escape attempts, one per isolation guarantee of docs/sandbox.md, through real sandboxes.

SysV IPC, the filesystem view, the whole-run memory cap, the network in every mode that is
allowed to run, time limits that exclude start-up, and the lifetime of a run whose caller
dies (a killed caller, a killed trainer behind a reward worker).
"""

import ctypes
import fcntl
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gdpo_megatron.rewards import sandbox as sandbox_module
from gdpo_megatron.rewards.sandbox import (_UID_BASE, _UID_LOCK_DIR, SandboxError, SandboxLimits, memory_cgroup_parent,
                                           run_sandboxed)
from gdpo_megatron.rewards.sandbox_preflight import unavailable_reason
from helpers.processes import live_processes_named  # noqa: E402

pytestmark = pytest.mark.skipif(unavailable_reason("namespaces") is not None,
                                reason=f"the default sandbox mode cannot run here: {unavailable_reason('namespaces')}")
LIMITS = SandboxLimits(wall_time_s=10.0, cpu_time_s=5.0, memory_mb=256, max_processes=8, max_file_mb=1)
REPO = Path(__file__).resolve().parents[2]
KEY = 0x67640000 + os.getpid() % 0xFFFF  # a SysV key of this test run
IPC_CREAT, IPC_RMID = 0o1000, 0

IPC_PROGRAM = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def attempt(call, *args):
    result = call(*args)
    return result if result >= 0 else -ctypes.get_errno()
print(attempt(libc.shmget, {key}, 4096, {flags}), attempt(libc.msgget, {key}, {flags}))
print(open('/proc/sysvipc/shm').read().count('\\n') - 1)
"""


def host_ipc_keys() -> set[int]:
    keys = set()
    for table in ("shm", "msg"):
        for line in Path(f"/proc/sysvipc/{table}").read_text().splitlines()[1:]:
            keys.add(int(line.split()[0]))
    return keys


def test_sysv_ipc_is_private_and_gone_after_the_run():
    libc = ctypes.CDLL(None, use_errno=True)
    host_key = KEY + 1
    host_segment = libc.shmget(host_key, 4096, IPC_CREAT | 0o600)  # the host's own segment
    assert host_segment >= 0
    try:
        first = run_sandboxed(IPC_PROGRAM.format(key=KEY, flags=IPC_CREAT | 0o666), limits=LIMITS)
        shm_id, msg_id = map(int, first.stdout.split()[:2])
        assert shm_id >= 0 and msg_id >= 0 and first.stdout.split()[2] == "1"  # created, and only its own is listed
        assert KEY not in host_ipc_keys()
        # The next run finds neither the first run's objects nor the host's segment.
        second = run_sandboxed(IPC_PROGRAM.format(key=KEY, flags=0), limits=LIMITS)
        assert second.stdout.split() == ["-2", "-2", "0"]  # ENOENT, ENOENT, no segment listed
        third = run_sandboxed(IPC_PROGRAM.format(key=host_key, flags=0), limits=LIMITS)
        assert third.stdout.split()[:2] == ["-2", "-2"]
    finally:
        libc.shmctl(host_segment, IPC_RMID, None)


def test_no_write_outside_the_work_dir_and_a_minimal_view(tmp_path):
    tag = f"gdpo-escape-{os.getpid()}"
    targets = [f"/run/{tag}", f"/run/lock/{tag}", f"/var/{tag}", f"/var/tmp/{tag}", f"/var/lock/{tag}",
               f"/dev/shm/{tag}", f"/etc/{tag}", f"/{tag}", f"/usr/lib/{tag}", f"{sys.base_prefix}/{tag}",
               f"{sys.base_prefix}/lib/python3.{sys.version_info.minor}/{tag}", f"/proc/{tag}", f"/dev/{tag}"]
    # Host paths: under /tmp or /work those names fall in the sandbox's own work dir; a checkout
    # elsewhere (CI clones under /check) is on the read-only root. Neither may reach the host.
    host_only = [str(tmp_path / tag), str(REPO / tag)]
    code = textwrap.dedent(f"""
        import os, sys
        print('repo visible', os.path.exists({str(REPO)!r}), os.path.exists({str(tmp_path)!r}))
        for path in {targets!r}:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, 'w').write('x')
                print('WROTE', path)
            except OSError:
                pass
        open('/work/inside', 'w').write('ok')
        open('/tmp/also-inside', 'w').write('ok')  # /tmp is the work dir
        print('inside', sorted(os.listdir('/work')))
        print('root', sorted(os.listdir('/')))
        for path in {host_only!r}:
            try:  # lands in the sandbox's own /tmp or /work, or is refused (a checkout elsewhere)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                open(path, 'w').write('x')
            except OSError:
                pass
        for name in ('torch', 'pytest', 'gdpo_megatron'):
            try:
                __import__(name)
                print('IMPORTED', name)
            except ImportError:
                pass
    """)
    result = run_sandboxed(code, limits=LIMITS)
    assert result.ok, result.stderr
    assert "WROTE" not in result.stdout and "IMPORTED" not in result.stdout
    assert "inside ['also-inside', 'inside', 'prog.py']" in result.stdout
    assert "repo visible False False" in result.stdout
    root = eval(result.stdout.split("root ")[1].splitlines()[0])  # noqa: S307 - our own printed list
    assert set(root) <= {"bin", "dev", "lib", "lib64", "proc", "root", "tmp", "usr", "work", "opt", "home"}
    for path in targets + host_only:
        assert not Path(path).exists(), path


@pytest.mark.skipif(memory_cgroup_parent() is None, reason="no delegated memory cgroup on this host")
def test_memory_cap_covers_forked_children():
    # Four children each hold 100 MiB, under the 256 MiB per-process limit but over the run's cap.
    code = textwrap.dedent("""
        import os, time
        children = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                block = b'x' * (100 << 20)
                time.sleep(1.5)
                os._exit(0)
            children.append(pid)
        held = sum(os.waitpid(pid, 0)[1] == 0 for pid in children)
        print('held', held)
    """)
    limits = SandboxLimits(wall_time_s=20.0, cpu_time_s=10.0, memory_mb=256, max_processes=8)
    result = run_sandboxed(code, limits=limits)
    held = int(result.stdout.split()[1]) if result.stdout.startswith("held") else 0
    assert held * 100 <= 256 and result.memory_exceeded
    # The same children fit one at a time: the cap is on the run, not a refusal to fork.
    sequential = code.replace("    children.append(pid)", "    os.waitpid(pid, 0)\n    children.append(pid)")
    sequential = sequential.replace("time.sleep(1.5)", "pass")
    again = run_sandboxed(sequential.replace("held = sum(os.waitpid(pid, 0)[1] == 0 for pid in children)",
                                             "held = len(children)"), limits=limits)
    assert again.ok and again.stdout.strip() == "held 4" and not again.memory_exceeded


@pytest.mark.parametrize("mode", ["namespaces", "rlimits"])
def test_no_network_in_any_allowed_mode(mode):
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    # Raw system calls, past anything Python-level: socket(2) for IPv4, IPv6, packet; then connect.
    code = textwrap.dedent(f"""
        import ctypes, struct
        libc = ctypes.CDLL(None, use_errno=True)
        for domain, kind in ((2, 1), (10, 1), (2, 2), (17, 3)):
            fd = libc.socket(domain, kind, 0)
            print('socket', domain, fd, ctypes.get_errno())
            if fd >= 0:
                address = struct.pack('<HH4s8x', 2, {port} >> 8 | ({port} & 255) << 8, bytes([127, 0, 0, 1]))
                print('connect', libc.connect(fd, address, len(address)))
    """)
    result = run_sandboxed(code, limits=SandboxLimits(wall_time_s=10.0, isolation=mode))
    try:
        accepted = server.accept()
    except BlockingIOError:
        accepted = None
    server.close()
    assert result.ok and accepted is None
    assert result.stdout.split("\n")[:4] == [f"socket {d} -1 13" for d in (2, 10, 2, 17)]


def test_weaker_modes_only_by_name_and_the_mode_is_logged(caplog):
    with pytest.raises(SandboxError, match="isolation must be one of"):
        run_sandboxed("pass", limits=SandboxLimits(isolation="userns"))
    with pytest.raises(SandboxError, match="isolation must be one of"):
        run_sandboxed("pass", limits=SandboxLimits(isolation="auto"))
    assert SandboxLimits().isolation == "namespaces"
    sandbox_module._log_mode.cache_clear()
    with caplog.at_level(logging.INFO, logger="gdpo_megatron.rewards.sandbox"):
        assert run_sandboxed("pass", limits=LIMITS).isolation == "namespaces"
        assert run_sandboxed("pass", limits=SandboxLimits(isolation="rlimits")).isolation == "rlimits"
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records[0][0] == "INFO" and "sandbox isolation: namespaces" in records[0][1]
    assert records[1][0] == "WARNING" and "rlimits (opted in; weaker" in records[1][1]


def test_time_limits_exclude_interpreter_start_up():
    # Launcher, namespaces and root set-up take 100-700 ms on the loaded 2-core host.
    started = time.monotonic()
    result = run_sandboxed("print(sum(range(1000)))", limits=SandboxLimits(wall_time_s=0.2, cpu_time_s=1.0))
    assert result.ok and result.stdout == "499500\n" and result.wall_time_s < 0.2
    assert time.monotonic() - started > result.wall_time_s
    slow = run_sandboxed("import time\ntime.sleep(0.5)", limits=SandboxLimits(wall_time_s=0.2, cpu_time_s=1.0))
    assert slow.timed_out and 0.2 <= slow.wall_time_s < 0.5


def _guards_below(ancestor: int) -> list[tuple[int, str]]:
    """(pid, staging dir) of the sandbox launchers that descend from `ancestor`."""
    parents, commands = {}, {}
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit():
                parents[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(pid)] = Path(f"/proc/{pid}/cmdline").read_text(errors="replace").split("\0")
        except (OSError, IndexError):
            pass

    def descends(pid):
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == ancestor:
                return True
        return False

    return [(pid, argv[4]) for pid, argv in commands.items()
            if len(argv) > 4 and argv[3].endswith("_sandbox_child.py") and descends(pid)]


CALLERS = {
    "run_sandboxed": "from gdpo_megatron.rewards.sandbox import SandboxLimits, run_sandboxed\n"
                     "run_sandboxed(PROGRAM, limits=SandboxLimits(wall_time_s=60, cpu_time_s=60))\n",
    # No pid namespace: the run's process group and uid are what the launcher kills.
    "rlimits": "from gdpo_megatron.rewards.sandbox import SandboxLimits, run_sandboxed\n"
               "run_sandboxed(PROGRAM, limits=SandboxLimits(wall_time_s=60, cpu_time_s=60, isolation='rlimits'))\n",
    # A trainer with one reward worker that runs a code reward: the trainer is killed.
    "reward_worker": "import multiprocessing as mp, time\n"
                     "from gdpo_megatron.rewards._reward_worker import worker_main\n"
                     "if __name__ == '__main__':\n"
                     "    parent, child = mp.Pipe()\n"
                     "    mp.get_context('spawn').Process(target=worker_main, args=(child, []), daemon=True).start()\n"
                     "    parent.recv()\n"
                     "    tests = {'style': 'function', 'asserts': ['assert f(1) == 1']}\n"
                     "    parent.send((0, 'code_pass', {'id': 'x', 'tests': tests}, PROGRAM, 1, {'timeout_s': 60}))\n"
                     "    time.sleep(600)\n",
}


@pytest.mark.parametrize("caller", sorted(CALLERS))
def test_a_dead_caller_takes_its_sandbox_with_it(caller, tmp_path):
    marker = f"gd{os.getpid() % 100000}-{caller[:3]}"  # a process name holds 15 characters
    name = f"ctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)"
    program = (f"import ctypes, os, signal, time\n{name}\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               f"if os.fork() == 0:\n    {name}\n    time.sleep(120)\n    os._exit(0)\n"
               "def f(x):\n    time.sleep(120)\ntime.sleep(0.1)\n" + ("" if caller == "reward_worker" else "f(1)\n"))
    script = tmp_path / "caller.py"
    script.write_text(f"PROGRAM = {program!r}\n" + CALLERS[caller])
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while len(live_processes_named(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        named = live_processes_named(marker)
        assert len(named) == 2, "the sandbox did not start"
        uid = int(Path(f"/proc/{named[0]}/status").read_text().split("Uid:")[1].split()[0])
        stagings = [Path(staging) for _, staging in _guards_below(proc.pid)]
        assert stagings and all(p.name.startswith("gdpo-sbx-") and p.exists() for p in stagings)
        killed_at = time.monotonic()
        proc.kill()
        while live_processes_named(marker) and time.monotonic() - killed_at < 5:
            time.sleep(0.02)
        gone_after = time.monotonic() - killed_at
    finally:
        proc.kill()
        proc.wait()
    # A dead caller: within a second; a dead trainer: its worker notices within 0.5 s, then the same.
    assert live_processes_named(marker) == [] and gone_after < (1.5 if caller == "reward_worker" else 1.0)
    time.sleep(0.2)
    assert not any(p.exists() for p in stagings)  # removed by the launchers, not by the dead caller
    fd = os.open(_UID_LOCK_DIR / f"{uid - _UID_BASE}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the lease is free
    finally:
        os.close(fd)


def test_rlimits_mode_keeps_runs_apart():
    # In rlimits mode runs share the host's /tmp and /proc; a run that finds another run's
    # staging dir in its launcher's command line still cannot read its program (the tests,
    # for a checker) or its work dir.
    from gdpo_megatron.rewards.sandbox import Sandbox

    limits = SandboxLimits(wall_time_s=20.0, isolation="rlimits")
    with Sandbox("SECRET = 'expected-value-42'\nimport time\ntime.sleep(20)", limits) as other:
        other.wait_started()
        code = textwrap.dedent("""
            import os
            found = 0
            for pid in os.listdir('/proc'):
                try:
                    argv = open(f'/proc/{pid}/cmdline').read().split('\\0')
                except OSError:
                    continue
                for arg in argv:
                    if '/gdpo-sbx-' in arg and arg != os.path.dirname(os.getcwd()):
                        found += 1
                        for name in ('prog.py', 'spec.json', 'work/prog.py', 'work'):
                            try:
                                path = os.path.join(arg, name)
                                print('READ', path, os.listdir(path) if name == 'work' else open(path).read())
                            except OSError:
                                pass
            print('found', found)
        """)
        result = run_sandboxed(code, limits=limits)
    assert result.ok, result.stderr
    assert "found 0" not in result.stdout and "READ" not in result.stdout and "expected-value-42" not in result.stdout
