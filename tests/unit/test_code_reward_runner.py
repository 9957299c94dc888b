"""The code rewards inside the real RewardRunner: what is NaN and counted, and what dies when.

Real worker processes and real sandboxes. Counters are asserted by hand: refusals,
sandbox failures, out-of-range values and program timeouts each have their own key.
"""

import fcntl
import math
import os
import threading
import time
from pathlib import Path

import pytest

from gdpo_megatron.config.algorithm import RewardSpec
from gdpo_megatron.config.scoring import ScoringConfig
from gdpo_megatron.rewards import REWARDS, RewardRunner
from gdpo_megatron.rewards.outcomes import RewardOutOfRange
from gdpo_megatron.rewards.sandbox import _UID_BASE, _UID_LOCK_DIR
from gdpo_megatron.rewards.sandbox_preflight import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason("namespaces") is not None,
                                reason=f"the default sandbox mode cannot run here: {unavailable_reason('namespaces')}")

ASSERTS = {"style": "function", "asserts": ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]}
CORRECT = "def add(a, b):\n    return a + b"


def test_counters_per_outcome():
    specs = [RewardSpec(name="pass", function="code_pass", args={"timeout_s": 1.0}),
             RewardSpec(name="pass_unknown_mode", function="code_pass", args={"isolation": "userns"}),
             RewardSpec(name="overflow", function="test_overflow")]
    records = [{"id": "ok", "tests": ASSERTS},
               {"id": "never-calls", "tests": {"style": "function", "asserts": ["assert 1 == 1"]}},
               {"id": "hangs", "tests": ASSERTS},
               {"id": "stdin", "tests": {"style": "stdin", "cases": [{"input": "", "output": "7"}]}}]
    responses = [CORRECT, CORRECT, "def add(a, b):\n    while True:\n        pass", "print(7)  # overflow"]
    scoring = ScoringConfig(num_workers=2, timeout_s=30.0, reward_modules=["plugins_out_of_range"])
    with RewardRunner(specs, scoring) as runner:
        batch = runner.score(records, responses, [1] * 4)
    values, m = batch.values, batch.metrics
    assert values[:, 0].tolist()[0] == 1.0 and math.isnan(values[1, 0]) and values[2, 0] == 0.0 and values[3, 0] == 1.0
    assert m["reward_refusals/pass"] == 1 and m["reward_program_timeouts/pass"] == 1
    assert m["reward_sandbox_failures/pass"] == 0 and m["reward_errors/pass"] == 0
    # an unknown isolation mode is a sandbox that cannot start: refused records are refused first
    assert torch_isnan_all(values[:, 1])
    assert m["reward_sandbox_failures/pass_unknown_mode"] == 3 and m["reward_refusals/pass_unknown_mode"] == 1
    assert m["reward_out_of_range/overflow"] == 1 and math.isnan(values[3, 2]) and values[0, 2] == 0.5
    assert m["reward_errors/overflow"] == 0 and m["reward_program_timeouts/overflow"] == 0


def torch_isnan_all(column):
    return bool(column.isnan().all())


def test_out_of_range_raises_when_called_directly():
    import plugins_out_of_range  # noqa: F401 - registers test_overflow here too

    with pytest.raises(RewardOutOfRange, match=r"outside its range \[0.0, 1.0\]"):
        REWARDS.get("test_overflow")({}, "overflow", 0)


def _sandbox_processes(marker: str) -> dict[int, int]:
    """Host pid -> uid of the processes whose name is `marker`."""
    found = {}
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and Path(f"/proc/{pid}/comm").read_text().strip() == marker:
                found[int(pid)] = int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0])
        except (OSError, IndexError):
            pass
    return found


def test_runner_timeout_kills_the_whole_sandbox():
    marker = f"gdpo-{os.getpid() % 100000}"
    # The program names itself and forks a child that ignores SIGTERM: both must die with the run.
    name = f"ctypes.CDLL(None).prctl(15, {marker.encode()!r}, 0, 0, 0)"  # PR_SET_NAME
    program = (f"import ctypes, os, signal, time\n{name}\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nif os.fork() == 0:\n"
               f"    {name}\n    time.sleep(120)\n    os._exit(0)\n"
               "def add(a, b):\n    time.sleep(60)")
    specs = [RewardSpec(name="pass", function="code_pass", args={"timeout_s": 60.0})]
    scoring = ScoringConfig(num_workers=1, timeout_s=3.0)
    seen: dict[int, int] = {}
    last_seen = [0.0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            alive = _sandbox_processes(marker)
            if alive:
                seen.update(alive)
                last_seen[0] = time.monotonic()
            time.sleep(0.02)

    with RewardRunner(specs, scoring) as runner:
        runner.score([{"id": "warm", "tests": ASSERTS}], [CORRECT], [1])  # workers up before the clock starts
        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.monotonic()
        batch = runner.score([{"id": "sleeper", "tests": ASSERTS}], [program], [1])
        deadline = started + scoring.timeout_s
        time.sleep(0.5)
        stop.set()
        watcher.join()
    assert batch.metrics["reward_timeouts/pass"] == 1 and math.isnan(batch.values[0, 0])
    assert len(set(seen.values())) == 1 and len(seen) == 2  # the program and its child, one leased uid
    assert last_seen[0] - deadline < 1.0  # gone within a second of the runner's timeout
    assert _sandbox_processes(marker) == {}
    # the uid is free again only now that its processes are gone
    slot = next(iter(seen.values())) - _UID_BASE
    fd = os.open(_UID_LOCK_DIR / f"{slot}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
