"""CheckpointManager: atomic publish, crash safety, pruning, resume decisions, run state."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gdpo_megatron.checkpointing import (
    CheckpointError,
    CheckpointManager,
    RunState,
    capture_rng_state,
    check_config_hash,
    config_hash,
    read_run_state,
    resolve_resume,
    restore_rng_state,
    write_run_state,
)


def _writer(payload: str):
    def write(directory):
        (directory / "model.txt").write_text(payload)
    return write


def test_save_publishes_step_dir_and_latest_pointer(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    assert manager.latest() is None
    saved = manager.save(3, _writer("weights-3"))
    assert saved.path == tmp_path / "ckpt" / "step-3"
    assert (saved.path / "model.txt").read_text() == "weights-3"
    assert (saved.path / "COMPLETE").read_text() == "3\n"
    assert (tmp_path / "ckpt" / "latest").read_text() == "step-3\n"
    assert manager.latest().step == 3
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["latest", "step-3"]


def test_write_fn_failure_keeps_previous_checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    manager.save(1, _writer("good"))

    def crashing_writer(directory):
        (directory / "model.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        manager.save(2, crashing_writer)
    latest = manager.latest()
    assert latest.step == 1
    assert (latest.path / "model.txt").read_text() == "good"
    assert not (tmp_path / ".tmp-step-2").exists()
    assert not (tmp_path / "step-2").exists()
    assert (tmp_path / "latest").read_text() == "step-1\n"


def test_process_killed_mid_save_leaves_last_good_and_next_start_cleans(tmp_path):
    """A hard kill (os._exit: no finally blocks, no cleanup) inside write_fn."""
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(4, _writer("good-4"))
    script = textwrap.dedent(f"""
        import os
        from gdpo_megatron.checkpointing import CheckpointManager
        def dying_writer(directory):
            (directory / "model.txt").write_text("partial")
            os._exit(9)
        CheckpointManager({str(tmp_path)!r}, keep_last=2).save(5, dying_writer)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 9, result.stderr
    assert (tmp_path / ".tmp-step-5" / "model.txt").read_text() == "partial"
    # Even before cleaning, the partial directory is never taken for a checkpoint.
    assert CheckpointManager(tmp_path, keep_last=2, clean_leftovers=False).latest().step == 4
    restarted = CheckpointManager(tmp_path, keep_last=2)
    assert not (tmp_path / ".tmp-step-5").exists()
    assert restarted.latest().step == 4
    assert (restarted.latest().path / "model.txt").read_text() == "good-4"


def test_pruning_keeps_exactly_keep_last(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=3)
    for step in range(1, 8):
        manager.save(step * 10, _writer(str(step)))
    assert [c.step for c in manager.complete()] == [50, 60, 70]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-50", "step-60", "step-70"]


def test_latest_survives_stale_pointer_and_half_pruned_trash(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=5)
    manager.save(1, _writer("1"))
    manager.save(2, _writer("2"))
    # Crash between the rename of step-2 and the pointer update: pointer still says step-1.
    (tmp_path / "latest").write_text("step-1\n")
    # Crash in the middle of deleting a pruned checkpoint: a .trash dir that still has COMPLETE.
    (tmp_path / ".trash-step-0").mkdir()
    (tmp_path / ".trash-step-0" / "COMPLETE").write_text("0\n")
    assert CheckpointManager(tmp_path, keep_last=5).latest().step == 2
    assert not (tmp_path / ".trash-step-0").exists()


def test_existing_complete_step_is_not_rewritten(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save(7, _writer("first"))
    calls = []
    again = manager.save(7, lambda d: calls.append(d))
    assert calls == []
    assert (again.path / "model.txt").read_text() == "first"


def test_resolve_resume_modes(tmp_path):
    empty = CheckpointManager(tmp_path / "empty")
    assert resolve_resume(empty, "auto") is None
    assert resolve_resume(empty, False) is None
    with pytest.raises(CheckpointError, match="resume=true but .*empty holds no complete checkpoint"):
        resolve_resume(empty, True)
    full = CheckpointManager(tmp_path / "full")
    full.save(2, _writer("x"))
    assert resolve_resume(full, True).step == 2
    assert resolve_resume(full, "auto").step == 2
    with pytest.raises(CheckpointError, match="resume=false but .*full already holds checkpoints .*step-2"):
        resolve_resume(full, False)


def test_run_state_round_trip_restores_rng_streams(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = RunState(step=12, config_hash="abc", sampler_state={"epoch": 1, "position": 40},
                     step_record={"step": 12, "reward/combined/mean": 0.5}, consecutive_nan_skips=1)
    write_run_state(tmp_path, state)
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    loaded, rng = read_run_state(tmp_path)
    restore_rng_state(rng)
    assert loaded == state
    assert random.random() == expected[0]
    assert float(np.random.rand()) == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


def test_run_state_refuses_nan_and_names_bad_file(tmp_path):
    with pytest.raises(CheckpointError, match="step 3 is not strict JSON"):
        write_run_state(tmp_path, RunState(step=3, config_hash="h", step_record={"loss": float("nan")}),
                        capture_rng_state())
    (tmp_path / "run_state.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"run_state.json: invalid JSON"):
        read_run_state(tmp_path)


def test_config_hash_ignores_resume_safe_keys_only(tmp_path):
    base = {"seed": 1, "trainer": {"max_steps": 10, "prompts_per_step": 4, "logging": {"wandb": False}}}
    longer = {"seed": 1, "trainer": {"max_steps": 99, "prompts_per_step": 4, "logging": {"wandb": True}}}
    other_seed = {"seed": 2, "trainer": {"max_steps": 10, "prompts_per_step": 4, "logging": {"wandb": False}}}
    assert config_hash(base) == config_hash(longer)
    assert config_hash(base) != config_hash(other_seed)
    state = RunState(step=1, config_hash=config_hash(base))
    check_config_hash(state, config_hash(longer), tmp_path)
    with pytest.raises(CheckpointError, match="written with recipe hash .* use a new trainer.run_dir"):
        check_config_hash(state, config_hash(other_seed), tmp_path)
