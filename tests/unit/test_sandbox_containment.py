"""The sandbox contains hostile programs: each is a failed run, and the host is unharmed.

Real child processes in the default mode (namespaces, see docs/sandbox.md; skipped with the
reason where the host cannot run it). Every limit is tiny
so that a containment failure could not hurt the shared machine.
"""

import os
import socket
import threading
from pathlib import Path

import pytest

from gdpo_megatron.rewards.sandbox import SandboxLimits, run_sandboxed
from gdpo_megatron.rewards.sandbox_preflight import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason("namespaces") is not None,
                                reason=f"the default sandbox mode cannot run here: {unavailable_reason('namespaces')}")

TINY = SandboxLimits(wall_time_s=5.0, cpu_time_s=2.0, memory_mb=256, max_processes=4,
                     max_output_bytes=64 * 1024, max_file_mb=1)


def test_ordinary_program_and_stdin():
    result = run_sandboxed("import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))", stdin="1 2 39", limits=TINY)
    assert result.ok and result.stdout == "42\n" and result.returncode == 0 and not result.timed_out


def test_process_limit_holds_before_fork_bomb():
    # Checked first, with a bounded loop: at most max_processes - 1 children can exist.
    code = ("import os, time\nn = 0\nfor _ in range(10):\n    try:\n        pid = os.fork()\n"
            "    except OSError:\n        break\n    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
            "    n += 1\nprint(n)")
    result = run_sandboxed(code, limits=TINY)
    assert result.stdout.strip() == str(TINY.max_processes - 1)
    assert result.wall_time_s < 5  # the sleeping children died with the run


def test_fork_bomb():
    result = run_sandboxed("import os\nwhile True:\n    os.fork()", limits=TINY)
    assert not result.ok and "Resource temporarily unavailable" in result.stderr


def test_infinite_loop_hits_cpu_limit():
    # A generous wall clock: on a loaded machine CPU time accrues slower than wall time.
    limits = SandboxLimits(wall_time_s=60.0, cpu_time_s=1.0, memory_mb=256, max_processes=4)
    result = run_sandboxed("while True:\n    pass", limits=limits)
    assert not result.ok and result.killed_reason == "cpu_time" and not result.timed_out


def test_sleeping_program_hits_wall_clock():
    limits = SandboxLimits(wall_time_s=1.0, cpu_time_s=1.0, max_processes=4)
    result = run_sandboxed("import time\ntime.sleep(60)", limits=limits)
    assert result.timed_out and result.killed_reason == "wall_time" and 1.0 <= result.wall_time_s < 5


def test_memory_bomb():
    result = run_sandboxed("x = bytearray(2 * 1024**3)\nprint('allocated')", limits=TINY)
    assert not result.ok and "MemoryError" in result.stderr and "allocated" not in result.stdout


def test_writing_outside_the_working_dir(tmp_path):
    target = tmp_path / "escape.txt"
    home_target = Path.home() / "gdpo-sandbox-escape.txt"  # the home of whoever runs the tests
    code = (f"import os\nfor p in [{str(target)!r}, {str(home_target)!r}, '/etc/gdpo-escape']:\n"
            "    try:\n        open(p, 'w').write('x')\n        print('WROTE', p)\n"
            "    except OSError as e:\n        print('denied', p, e.errno)\n"
            "open('inside.txt', 'w').write('fine')\nprint('inside ok')")
    result = run_sandboxed(code, limits=TINY)
    assert "WROTE" not in result.stdout and "inside ok" in result.stdout
    assert not target.exists() and not home_target.exists() and not Path("/etc/gdpo-escape").exists()


def test_disk_filling_is_capped():
    # Python ignores SIGXFSZ, so the oversized write fails with EFBIG instead of killing the process.
    result = run_sandboxed("open('big', 'wb').write(b'x' * 8 * 1024 * 1024)", limits=TINY)
    assert not result.ok and result.returncode == 1 and "File too large" in result.stderr


def test_secrets_in_host_environment_are_not_visible(monkeypatch):
    monkeypatch.setenv("GDPO_TEST_SECRET", "hunter2")
    code = ("import os\nprint(sorted(os.environ))\n"
            "for pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
            "        try:\n            print(open(f'/proc/{pid}/environ', 'rb').read())\n"
            "        except OSError:\n            pass")
    result = run_sandboxed(code, limits=TINY)
    assert result.ok and "hunter2" not in result.stdout and "GDPO_TEST_SECRET" not in result.stdout


def test_no_network():
    # A listening socket on the host that the program tries to reach.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    accepted = []
    server.settimeout(3)

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    thread = threading.Thread(target=accept)
    thread.start()
    code = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'leak')\nprint('connected')")
    result = run_sandboxed(code, limits=TINY)
    thread.join()
    server.close()
    assert not result.ok and "connected" not in result.stdout and not accepted


def test_printing_gigabytes_is_cut():
    result = run_sandboxed("while True:\n    print('x' * 100000)", limits=TINY)
    assert result.killed_reason == "output_limit" and result.stdout_truncated
    assert len(result.stdout) <= TINY.max_output_bytes and not result.ok


def test_killing_the_parent():
    host_pid = os.getpid()
    code = (f"import os, signal\nfor pid in (os.getppid(), {host_pid}, 1):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError as e:\n        print('refused', pid, e.errno)\n"
            "try:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError as e:\n    print('refused all', e.errno)\n"
            "raise SystemExit('parent survived')")
    result = run_sandboxed(code, limits=TINY)
    # The launcher (our direct child) was not killed: it reports the program's own exit status.
    assert result.returncode == 1 and "parent survived" in result.stderr and not result.ok
    assert "refused all" in result.stdout
    assert os.getpid() == host_pid  # the host process is still here


def test_many_in_parallel_are_independent():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: run_sandboxed(f"print({i} * {i})", limits=TINY), range(12)))
    assert [r.stdout.strip() for r in results] == [str(i * i) for i in range(12)]


def test_working_dir_is_removed():
    before = {p.name for p in Path("/tmp").glob("gdpo-sbx-*")}
    run_sandboxed("open('leftover.txt', 'w').write('x')", limits=TINY)
    assert {p.name for p in Path("/tmp").glob("gdpo-sbx-*")} <= before


def test_namespaces_mode_runs_as_unprivileged_uid():
    result = run_sandboxed("import os\nprint(os.getuid(), os.getpid())", limits=TINY)
    uid, pid = map(int, result.stdout.split())
    assert uid >= 2_000_000_000 and pid == 2  # pid 1 is the launcher that reports the exit status
