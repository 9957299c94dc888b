"""The supervised warm start that creates the tiny recipe's initial policy."""

import json
import math

from gdpo_megatron.config import load_recipe
from gdpo_megatron.data import render_prompt
from gdpo_megatron.data.synthetic import build_tokenizer, warmstart_examples
from gdpo_megatron.warmstart import Demonstration, run_warmstart


def test_warm_start_learns_saves_the_recipe_shape_and_is_reused(tmp_path, repo_root):
    from transformers import AutoModelForCausalLM

    recipe = load_recipe(repo_root / "recipes/tiny/synthetic-gdpo-1n2c.yaml", ["warmstart.steps=40"])
    tokenizer = build_tokenizer()
    demos = [Demonstration(render_prompt(e["record"], tokenizer), e["response"])
             for e in warmstart_examples(400, recipe.seed, max_operand=9)]
    logs = []
    out = run_warmstart(recipe.policy.model, recipe.warmstart, tokenizer, demos, tmp_path / "m", recipe.seed,
                        log=logs.append)
    summary = json.loads((out / "warmstart.json").read_text())
    # A uniform guess over the vocabulary costs ln(107) = 4.67 nats per token; 40 steps get far below.
    assert summary["final_loss"] < 0.6 * math.log(len(tokenizer))
    model = AutoModelForCausalLM.from_pretrained(out)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.vocab_size) == (128, 2, 2, len(tokenizer))
    assert cfg.head_dim == 64  # the vLLM CPU build needs it
    assert summary["parameters"] == sum(p.numel() for p in model.parameters())

    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = run_warmstart(recipe.policy.model, recipe.warmstart, tokenizer, demos, tmp_path / "m", recipe.seed,
                          log=logs.append)
    assert again == out and (out / "model.safetensors").stat().st_mtime_ns == stamp
    assert logs[-1] == f"[warmstart] reusing {out}"
