"""GracefulStop: SIGTERM -> checkpoint + documented exit code; second SIGINT aborts."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap

from gdpo_megatron.checkpointing import CheckpointManager, read_run_state
from gdpo_megatron.signals import ABORTED_EXIT_CODE, INTERRUPTED_EXIT_CODE, GracefulStop

# A tiny training loop shaped like the real one: steps, periodic checkpoints every 3
# steps, and the stop flag checked between steps. `slow_step` makes one step hang so a
# signal can land inside it.
LOOP = textwrap.dedent("""
    import sys, time
    from gdpo_megatron.checkpointing import CheckpointManager, RunState, write_run_state
    from gdpo_megatron.signals import ABORTED_EXIT_CODE, INTERRUPTED_EXIT_CODE, GracefulStop

    run_dir, slow_step, slow_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    manager = CheckpointManager(run_dir, keep_last=2)

    def save(step):
        manager.save(step, lambda d: write_run_state(d, RunState(step=step, config_hash="h")))

    def main():
        with GracefulStop() as stop:
            for step in range(1, 1000):
                print(f"step {step}", flush=True)
                time.sleep(slow_seconds if step == slow_step else 0.05)
                if step % 3 == 0:
                    save(step)
                if stop.requested:
                    save(step)
                    print(f"stopped after {step}", flush=True)
                    return INTERRUPTED_EXIT_CODE
        return 0

    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(ABORTED_EXIT_CODE)
""")


def _start_loop(tmp_path, slow_step, slow_seconds):
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "ckpt"), str(slow_step), str(slow_seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(process, wanted):
    for line in process.stdout:
        if line.strip() == wanted:
            return
    raise AssertionError(f"loop ended before printing {wanted!r}: {process.stderr.read()}")


def test_sigterm_mid_step_checkpoints_that_step_and_exits_with_documented_code(tmp_path):
    process = _start_loop(tmp_path, slow_step=4, slow_seconds=2.0)
    try:
        _wait_for_line(process, "step 4")  # step 4 lasts 2 s: the signal lands inside it
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == INTERRUPTED_EXIT_CODE, err
    assert "stopped after 4" in out
    assert "SIGTERM received: finishing the current step" in err
    latest = CheckpointManager(tmp_path / "ckpt").latest()
    assert latest.step == 4
    assert read_run_state(latest.path)[0].step == 4


def test_second_sigint_aborts_without_new_checkpoint(tmp_path):
    process = _start_loop(tmp_path, slow_step=5, slow_seconds=60.0)
    try:
        _wait_for_line(process, "step 5")
        process.send_signal(signal.SIGINT)
        for line in process.stderr:  # wait until the first one is acknowledged
            if "SIGINT received" in line:
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == ABORTED_EXIT_CODE
    assert "stopped after" not in out
    assert "second interrupt: aborting now" in err
    assert CheckpointManager(tmp_path / "ckpt").latest().step == 3  # the periodic one, intact


def test_handlers_are_restored_and_flag_set_in_process():
    def sentinel(signum, frame):
        raise AssertionError("previous handler must not run while GracefulStop is active")

    previous = signal.signal(signal.SIGTERM, sentinel)
    try:
        stream = io.StringIO()
        with GracefulStop(stream=stream) as stop:
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested and stop.signal_name == "SIGTERM received"
            os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM is not an abort
        assert "SIGTERM received again" in stream.getvalue()
        assert signal.getsignal(signal.SIGTERM) is sentinel
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_refuses_worker_threads():
    import threading

    errors = []
    thread = threading.Thread(target=lambda: _enter_and_record(errors))
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])


def _enter_and_record(errors):
    try:
        with GracefulStop():
            pass
    except RuntimeError as exc:
        errors.append(exc)


def test_disabled_keeps_existing_handlers():
    def sentinel(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, sentinel)
    try:
        with GracefulStop(enabled=False) as stop:
            assert signal.getsignal(signal.SIGTERM) is sentinel
            assert not stop.requested
    finally:
        signal.signal(signal.SIGTERM, previous)
