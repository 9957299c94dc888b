"""End to end: `gdpo train` on the tiny recipe with real Ray, megatron-core (gloo) and vLLM (CPU build).

One warm-started model (tests/e2e/conftest.py) is shared by every run; each run is a real
`gdpo train` subprocess, so Ray, the engine and the policy ranks start and stop as
they do for users.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

RECIPE = "recipes/tiny/synthetic-gdpo-1n2c.yaml"
SMALL = ["trainer.prompts_per_step=8", "trainer.rollouts_per_prompt=4", "generation.sampling.max_new_tokens=24",
         "trainer.checkpoint.every_steps=1", "trainer.checkpoint.keep_last=2"]
TIMING_PREFIXES = ("time/", "throughput/", "memory/", "refit/seconds", "wall")


def train_command(run_dir: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gdpo_megatron.cli", "train", RECIPE, f"trainer.run_dir={run_dir}",
            "warmstart.enabled=false", f"policy.model.hf_path={model}", *SMALL, *extra]


def run_train(repo_root: Path, run_dir: Path, model: Path, *extra: str, timeout: int = 600):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(train_command(run_dir, model, *extra), cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(TIMING_PREFIXES)}


def policy_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def written_keys_are_the_documented_ones(repo_root: Path, records: list[dict], run_dir: Path, model: Path,
                                         *extra: str) -> None:
    """The run's keys, over all its records, are exactly those docs/observability.md lists for its recipe."""
    from gdpo_megatron.config import load_recipe
    from gdpo_megatron.metrics.keys import expected_keys

    recipe = load_recipe(repo_root / RECIPE, train_command(run_dir, model, *extra)[5:])
    written = set().union(*records)
    expected = expected_keys(recipe)
    assert written == expected, (f"written, not documented: {sorted(written - expected)}; "
                                 f"documented, not written: {sorted(expected - written)}")


def check_run(run_dir: Path, steps: int, reward_names=("correct", "format", "length")) -> list[dict]:
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    for record in records:
        for name in reward_names:
            assert math.isfinite(record[f"reward/{name}/mean"]), (name, record)
        assert math.isfinite(record["train/loss"]) and record["train/updates"] >= 1
        assert record["refit/bytes"] > 0  # the engine received the updated weights every step
        # Right after a refit, the engine samples from the policy's weights: the train/generation
        # logprob mismatch |exp(dlogp) - 1| is fp32 round-off on every token, from the first
        # step on (measured: max ~2e-6), which also proves the refit took effect (stale
        # weights after one update give ~1e-2).
        assert record["mismatch/max"] < 1e-4, record["mismatch/max"]
        assert record["mismatch/above_warn"] == 0.0
        assert 0 < record["train/grad_norm"] < 1e3
    return records


# Two-digit operands give prompts of 15 to 17 tokens: step 1 then has rollouts that end at the
# batch's last token column beside a rollout with a shorter prompt and a longer response (measured:
# three such rows), where engine logprobs once landed off their column. Checkpoints at steps 2 and 3.
DP1 = ("trainer.max_steps=3", "trainer.validation.every_steps=3", "trainer.validation.num_prompts=6",
       "data.args.max_operand=99", "trainer.checkpoint.every_steps=2")
# Short responses make some rollouts hit max_new_tokens, which overlong filtering takes out of the loss.
DP2 = ("trainer.max_steps=2", "cluster.cpu_workers=2", "trainer.dynamic_sampling.enabled=true",
       "trainer.overlong_filtering=true", "generation.sampling.max_new_tokens=12")


def test_dp1_trains_and_refits(repo_root, tmp_path, initial_model):
    run_dir = tmp_path / "dp1"
    proc = run_train(repo_root, run_dir, initial_model, *DP1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = check_run(run_dir, 3)
    written_keys_are_the_documented_ones(repo_root, records, run_dir, initial_model, *DP1)
    assert "val/accuracy" not in records[1]
    last = records[2]  # validated after step 3: held-out prompts, one sample each
    assert last["val/num_prompts"] == 6 and last["val/num_samples"] == 6
    for key in ("val/accuracy", "val/format_rate", "val/exceed"):
        assert 0.0 <= last[key] <= 1.0 and (last[key] * 6).is_integer(), key
    assert "[done] 3 steps" in proc.stdout
    assert "[refit] transport collective (generation.refit.transport: auto)" in proc.stdout
    # Steps 2 (every_steps) and 3 (the last) saved a checkpoint; the record of each holds its time.
    assert [("time/checkpoint" in r) for r in records] == [False, True, True]
    assert all(math.isfinite(r["time/checkpoint"]) and r["time/checkpoint"] > 0 for r in records[1:])
    assert [f"[checkpoint] step {s} saved" in proc.stdout for s in (1, 2, 3)] == [False, True, True]
    before, after = policy_weights(initial_model), policy_weights(run_dir / "final_model")
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before), f"unchanged after 3 updates: {sorted(set(before) - set(changed))}"


def test_dp2_two_policy_workers(repo_root, tmp_path, initial_model):
    run_dir = tmp_path / "dp2"
    # The object-store refit transport (the DP1 run takes `auto`: the collective gloo broadcast);
    # check_run's mismatch bound proves the refit landed.
    proc = run_train(repo_root, run_dir, initial_model, *DP2, "generation.refit.transport=object_store")
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = check_run(run_dir, 2)
    assert "[refit] transport object_store (generation.refit.transport: object_store)" in proc.stdout
    written_keys_are_the_documented_ones(repo_root, records, run_dir, initial_model, *DP2)
    assert any(r["response_len/clip_frac"] > 0 for r in records)  # the filter had something to do
    for r in records:
        # Dynamic sampling keeps whole informative groups, at most prompts_per_step of them, and both
        # ranks' rollouts are counted exactly once in the global normalization.
        assert r["dynamic_sampling/rounds"] >= 1
        assert r["samples"] <= 8 * 4
        # Overlong-filtered rollouts are out of the loss normalizers but still measured for mismatch.
        truncated = round(r["response_len/clip_frac"] * r["samples"])
        assert r["train/global_sequences"] == r["samples"] - truncated
        assert (r["train/global_tokens"] < r["mismatch/tokens"]) == (truncated > 0)
        assert r["samples"] % 4 == 0
        assert r["groups/count"] == r["samples"] / 4
        assert min(r[f"reward/{name}/zero_var_group_frac"] for name in ("correct", "format", "length")) < 1.0


def test_sigterm_checkpoints_and_resume_matches_uninterrupted_run(repo_root, tmp_path, initial_model):
    steps = 4
    full_dir = tmp_path / "full"
    proc = run_train(repo_root, full_dir, initial_model, f"trainer.max_steps={steps}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    full = read_metrics(full_dir)

    cut_dir = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(train_command(cut_dir, initial_model, f"trainer.max_steps={steps}"), cwd=repo_root,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics_file = cut_dir / "metrics.jsonl"
    deadline = time.monotonic() + 500
    while time.monotonic() < deadline and child.poll() is None:
        if metrics_file.exists() and metrics_file.read_text().count("\n") >= 1:
            child.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    output, _ = child.communicate(timeout=300)
    assert child.returncode == 75, output[-4000:]  # checkpointed and stopped: "try again later"
    stopped_at = len(read_metrics(cut_dir))
    assert 1 <= stopped_at < steps
    assert f"checkpointed step {stopped_at}" in output

    proc = run_train(repo_root, cut_dir, initial_model, f"trainer.max_steps={steps}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"[resume] from step {stopped_at}" in proc.stdout
    resumed = read_metrics(cut_dir)
    assert [comparable(r) for r in resumed] == [comparable(r) for r in full]


ADAPTIVE_GFPO = ["algorithm.group_filter.metric=length",
                 "algorithm.group_filter.adaptive={quantiles: [0.5], retain: [3, 2], window: 12}"]


def test_adaptive_gfpo_trains_on_retained_only_and_resumes_its_statistics(repo_root, tmp_path, initial_model):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    proc = run_train(repo_root, full_dir, initial_model, "trainer.max_steps=3", *ADAPTIVE_GFPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    full = check_run(full_dir, 3)
    written_keys_are_the_documented_ones(repo_root, full, full_dir, initial_model, "trainer.max_steps=3",
                                         *ADAPTIVE_GFPO)
    for r in full:
        kept = r["gfpo/bucket0/groups"] * 3 + r["gfpo/bucket1/groups"] * 2
        assert r["gfpo/bucket0/groups"] + r["gfpo/bucket1/groups"] == 8
        # only the retained rollouts reach the policy ranks and the loss normalizer
        assert r["samples"] == r["train/global_sequences"] == kept == r["gfpo/retained_frac"] * 8 * 4
        assert r["gfpo/response_len/retained_mean"] <= r["response_len/mean"]
        # reward means describe every sampled rollout (nothing is missing here, weights are 1)
        all_sampled = sum(r[f"reward/{name}/mean"] for name in ("correct", "format", "length"))
        assert abs(r["reward/combined/mean"] - all_sampled) < 1e-9
    assert [r["gfpo/difficulty/window"] for r in full] == [8, 12, 12]

    # stop after step 1 (a checkpoint), then extend the same run to 3 steps: the difficulty
    # statistics come back from the run state, so steps 2 and 3 equal the uninterrupted run
    proc = run_train(repo_root, cut_dir, initial_model, "trainer.max_steps=1", *ADAPTIVE_GFPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # as if killed between step 1's checkpoint and its record: the checkpoint holds the record
    (cut_dir / "metrics.jsonl").write_text("")
    proc = run_train(repo_root, cut_dir, initial_model, "trainer.max_steps=3", *ADAPTIVE_GFPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[resume] from step 1" in proc.stdout
    assert "[resume] step 1's metrics record restored from its checkpoint" in proc.stdout
    assert [comparable(r) for r in read_metrics(cut_dir)] == [comparable(r) for r in full]


OVERLAP = ("trainer.overlap_generation=true", "trainer.max_steps=3", "trainer.checkpoint.keep_last=3")


def test_overlap_generation_trains_one_update_behind_and_resumes_the_batch_in_flight(repo_root, tmp_path,
                                                                                     initial_model):
    in_step_dir, overlap_dir = tmp_path / "in-step", tmp_path / "overlap"
    proc = run_train(repo_root, in_step_dir, initial_model, "trainer.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    in_step = read_metrics(in_step_dir)
    proc = run_train(repo_root, overlap_dir, initial_model, *OVERLAP)
    assert proc.returncode == 0, proc.stderr[-4000:]
    overlap = read_metrics(overlap_dir)
    written_keys_are_the_documented_ones(repo_root, overlap, overlap_dir, initial_model, *OVERLAP)
    assert [r["step"] for r in overlap] == [1, 2, 3]
    # Step 1 is collected before any update, from the same weights and seed: the same step.
    assert comparable(overlap[0]) == comparable(in_step[0])
    # Steps 2 and 3 train on rollouts sampled before the previous update: the engines' logprobs
    # are one update old (~1e-2 apart; in step: fp32 round-off, < 1e-4).
    assert overlap[0]["mismatch/max"] < 1e-4
    assert all(r["mismatch/max"] > 1e-3 for r in overlap[1:]), [r["mismatch/max"] for r in overlap]
    assert all(r["mismatch/max"] < 1e-4 for r in in_step)
    assert all(r["time/rollout_wait"] >= 0 and r["train/updates"] == 1 for r in overlap)

    # Resume from step 1's checkpoint, taken while step 2's rollouts were held, not yet trained on:
    # the run draws step 2's prompts again, now from the checkpoint's weights, so its step 2 is
    # the in-step run's step 2.
    for later in ("step-2", "step-3"):
        shutil.rmtree(overlap_dir / "checkpoints" / later)
    lines = (overlap_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (overlap_dir / "metrics.jsonl").write_text(lines[0])
    proc = run_train(repo_root, overlap_dir, initial_model, "trainer.overlap_generation=true", "trainer.max_steps=2",
                     "trainer.checkpoint.keep_last=3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[resume] from step 1" in proc.stdout
    resumed = read_metrics(overlap_dir)
    assert comparable(resumed[1]) == comparable(in_step[1])
