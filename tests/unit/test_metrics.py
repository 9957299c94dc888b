"""Metrics: JSONL records and resume truncation, progress lines, sinks (TensorBoard, W&B offline)."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from gdpo_megatron.metrics import (
    MetricsFileError,
    MetricsLogger,
    ProgressDisplay,
    format_duration,
    progress_line,
    read_metrics,
    truncate_after,
)
from gdpo_megatron.metrics.jsonl import make_record
from gdpo_megatron.metrics.keys import reward_components, reward_mean


def _logging(**overrides):
    base = dict(tensorboard=False, wandb=False, wandb_project="test", wandb_entity=None,
                wandb_mode="offline", progress="off", progress_keys=[])
    base.update(overrides)
    return SimpleNamespace(**base)


def _step_metrics(step):
    # Deterministic per step, so two runs that log the same steps write the same bytes.
    return {"reward/format/mean": step / 8, "reward/correct/mean": step / 16,
            "reward/combined/mean": 3 * step / 16, "response_len/mean": 10.0 + step}


def test_make_record_cleans_tensors_numpy_and_non_finite():
    record = make_record(3, {"a": torch.tensor(0.5), "b": np.float32(0.25), "c": np.int64(7),
                             "d": float("nan"), "e": float("-inf"), "f": True, "g": "text"})
    assert record == {"step": 3, "a": 0.5, "b": 0.25, "c": 7, "d": None, "e": None, "f": True, "g": "text"}
    with pytest.raises(TypeError, match="metric 'v': expected a scalar, got a tensor of shape \\(2,\\)"):
        make_record(1, {"v": torch.zeros(2)})
    with pytest.raises(TypeError, match="metric 'x': expected a number"):
        make_record(1, {"x": [1, 2]})


def test_resume_truncates_jsonl_to_match_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    with MetricsLogger(full, total_steps=6, logging_config=_logging()) as logger:
        for step in range(1, 7):
            logger.log(step, _step_metrics(step))

    interrupted = tmp_path / "interrupted"
    with MetricsLogger(interrupted, total_steps=6, logging_config=_logging()) as logger:
        for step in range(1, 6):  # got to step 5, but the last checkpoint is step 3
            logger.log(step, _step_metrics(step))
    with open(interrupted / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 6, "reward/for')  # torn line from the crash
    with MetricsLogger(interrupted, total_steps=6, logging_config=_logging(), resume_from_step=3) as logger:
        assert [r["step"] for r in read_metrics(interrupted / "metrics.jsonl")] == [1, 2, 3]
        for step in range(4, 7):
            logger.log(step, _step_metrics(step))

    assert (interrupted / "metrics.jsonl").read_bytes() == (full / "metrics.jsonl").read_bytes()
    assert [r["step"] for r in read_metrics(full / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_fresh_run_replaces_old_metrics_and_truncate_counts(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 5)))
    assert truncate_after(path, 2) == 2
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    with MetricsLogger(tmp_path, total_steps=2, logging_config=_logging()) as logger:
        logger.log(1, {"samples": 1.0})
    assert read_metrics(path) == [{"step": 1, "samples": 1.0}]


def test_read_metrics_errors_name_file_and_line(tmp_path):
    with pytest.raises(MetricsFileError, match=r"missing.jsonl: no such metrics file"):
        read_metrics(tmp_path / "missing.jsonl")
    bad = tmp_path / "metrics.jsonl"
    bad.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl:2: invalid JSON"):
        read_metrics(bad)
    bad.write_text('{"step": 1}\n{"loss": 2}\n')
    with pytest.raises(MetricsFileError, match=r"metrics.jsonl:2: expected an object with an integer 'step'"):
        read_metrics(bad)


def test_key_helpers():
    assert reward_mean("format") == "reward/format/mean"
    keys = ["reward/format/mean", "reward/combined/mean", "reward/format/std", "reward/correct/mean", "loss/pg"]
    assert reward_components(keys) == ["correct", "format"]
    with pytest.raises(ValueError):
        reward_mean("a/b")


def test_format_duration_and_progress_line_golden():
    assert [format_duration(s) for s in (0, 59.4, 125, 3725)] == ["0s", "59s", "2m05s", "1h02m"]
    line = progress_line(12, 100, 3.4, {**_step_metrics(4), "train/kl_ref": 0.0123}, extra_keys=["train/kl_ref"])
    # ETA = 3.4 s * 88 steps = 299.2 s
    assert line == ("step 12/100 (12%) | 3.40 s/step | ETA 4m59s | combined 0.75 | correct 0.25 | "
                    "format 0.5 | len 14 | train/kl_ref 0.0123")
    assert progress_line(1, 10, None, {"reward/x/mean": None}) == "step 1/10 (10%) | x nan"


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_plain_lines_when_not_a_tty():
    stream, clock = io.StringIO(), _Clock()
    display = ProgressDisplay(10, stream=stream, clock=clock, start_step=2, window=2)
    assert display.mode == "plain"
    for step, seconds in ((3, 4.0), (4, 2.0), (5, 3.0), (6, 10.0)):
        clock.now += seconds
        display.update(step, {"reward/combined/mean": 0.5})
    display.log("validation done")
    display.close()
    # The first step after a (re)start is shown, not used. Then s/step over the last 2 steps:
    # step 4: 2 s, ETA 6 x 2 = 12 s; step 5: (2 + 3) / 2 = 2.5, ETA 5 x 2.5 = 12.5 s -> "12s";
    # step 6: (3 + 10) / 2 = 6.5 (step 4 left the window), ETA 4 x 6.5 = 26 s.
    assert stream.getvalue().splitlines() == [
        "step 3/10 (30%) | first step 4.0s | combined 0.5",
        "step 4/10 (40%) | 2.00 s/step | ETA 12s | combined 0.5",
        "step 5/10 (50%) | 2.50 s/step | ETA 12s | combined 0.5",
        "step 6/10 (60%) | 6.50 s/step | ETA 26s | combined 0.5",
        "validation done",
    ]
    assert "\x1b" not in stream.getvalue()


def test_eta_leaves_out_start_up():
    # The tiny recipe (150 steps): the first step took 52.7 s with engine warm-up, the second 0.3 s.
    # Counting the first step gave (52.7 + 0.3) / 2 = 26.50 s/step and "ETA 1h05m".
    stream, clock = io.StringIO(), _Clock()
    display = ProgressDisplay(150, stream=stream, clock=clock)
    clock.now += 52.7
    display.update(1, {})
    clock.now += 0.3
    display.update(2, {})
    display.update(2, {"val/accuracy": 0.5})  # a second record of the same step changes nothing
    clock.now += 0.5
    display.update(4, {})  # two steps in one record: 0.25 s each
    assert stream.getvalue().splitlines() == [
        "step 1/150 (0%) | first step 52.7s",
        "step 2/150 (1%) | 0.30 s/step | ETA 44s",  # 148 x 0.3 = 44.4 s
        "step 2/150 (1%) | 0.30 s/step | ETA 44s",
        "step 4/150 (2%) | 0.27 s/step | ETA 39s",  # (0.3 + 0.25 + 0.25) / 3 = 0.2667, x 146 = 38.9 s
    ]


def test_progress_live_line_on_a_tty():
    class TTY(io.StringIO):
        def isatty(self):
            return True

    stream, clock = TTY(), _Clock()
    display = ProgressDisplay(4, stream=stream, clock=clock)
    assert display.mode == "live"
    clock.now += 1.0
    display.update(1, {})
    display.log("note")
    display.close()
    assert stream.getvalue() == ("\r\x1b[2Kstep 1/4 (25%) | first step 1.0s"
                                 "\r\x1b[2Knote\nstep 1/4 (25%) | first step 1.0s\n")


def test_tensorboard_sink_writes_scalars_and_purges_on_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = _logging(tensorboard=True)
    with MetricsLogger(tmp_path, total_steps=4, logging_config=config) as logger:
        for step in range(1, 5):
            logger.log(step, _step_metrics(step))
    with MetricsLogger(tmp_path, total_steps=4, logging_config=config, resume_from_step=2) as logger:
        logger.log(3, {"reward/format/mean": 9.0})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = [(e.step, e.value) for e in events.Scalars("reward/format/mean")]
    assert scalars == [(1, 0.125), (2, 0.25), (3, 9.0)]


@pytest.mark.slow
def test_wandb_offline_without_network_keeps_files_in_run_dir(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # any network use would fail
    for variable in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_SILENT"):
        # set-then-delete registers the variable, so the sink's setdefault is undone afterwards
        monkeypatch.setenv(variable, "placeholder")
        monkeypatch.delenv(variable)
    run = tmp_path / "run"
    config = _logging(wandb=True)
    with MetricsLogger(run, total_steps=2, logging_config=config, config={"seed": 1}) as logger:
        logger.log(1, _step_metrics(1))
        first_id = (run / "wandb" / "run_id").read_text().strip()
    with MetricsLogger(run, total_steps=2, logging_config=config, resume_from_step=1) as logger:
        logger.log(2, _step_metrics(2))
    assert (run / "wandb" / "run_id").read_text().strip() == first_id
    offline_runs = sorted((run / "wandb").glob(f"offline-run-*-{first_id}"))
    assert offline_runs and all((d / f"run-{first_id}.wandb").stat().st_size > 0 for d in offline_runs)
    assert not home.exists() or not any(home.rglob("*wandb*"))


def test_logger_accepts_run_dir_object(tmp_path):
    from gdpo_megatron.run_dir import RunDir

    run = RunDir.create(tmp_path / "run")
    with MetricsLogger(run, _logging(), total_steps=1, resume_from_step=0) as logger:
        logger.log(1, {"samples": 2.0})
    assert read_metrics(run.metrics) == [{"step": 1, "samples": 2.0}]
