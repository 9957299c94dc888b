"""Planner: golden memory numbers computed by hand, published reference values, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gdpo_megatron.cli import main
from gdpo_megatron.config import ConfigError
from gdpo_megatron.recipe_checks import load_checked_recipe as load_recipe
from gdpo_megatron.model_catalog import CATALOG, lookup, resolve_arch
from gdpo_megatron.planner import make_plan
from gdpo_megatron.planner.memory import bytes_per_param, kv_bytes_per_token

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
QWEN_1_5B = RECIPES / "qwen2.5-1.5b-instruct" / "tool-calling-gdpo-1n8g.yaml"
LLAMA_8B = RECIPES / "llama-3.1-8b-instruct" / "tool-calling-gdpo-2n8g.yaml"
LLAMA_8B_FP8 = RECIPES / "llama-3.1-8b-instruct" / "tool-calling-gdpo-fp8-2n8g.yaml"
LLAMA_70B = RECIPES / "llama-3.3-70b-instruct" / "math-gdpo-8n8g.yaml"
GIB = 2 ** 30


def errors_of(plan) -> list[str]:
    return [str(f) for f in plan.errors]


# ---- architecture facts against the published parameter counts (model cards) -------------

@pytest.mark.parametrize("name, published", [
    ("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304),
    ("Qwen/Qwen2.5-3B-Instruct", 3_085_938_688),
    ("Qwen/Qwen2.5-32B-Instruct", 32_763_876_352),
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", 7_615_616_512),
    ("Qwen/Qwen3-4B-Instruct-2507", 4_022_468_096),
    ("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248),
    ("meta-llama/Llama-3.3-70B-Instruct", 70_553_706_496),
])
def test_catalog_parameter_counts_match_published_totals(name, published):
    assert CATALOG[name].total_params() == published


def test_catalog_lookup_by_short_name_and_local_config_json_wins(tmp_path):
    assert lookup("llama-3.1-8b-instruct").hidden_size == 4096
    # A local checkpoint directory: its config.json decides, not the catalog.
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 256,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 100, "tie_word_embeddings": True}))
    recipe = load_recipe(QWEN_1_5B, [f"policy.model.hf_path={tmp_path}"])
    arch = resolve_arch(recipe.policy.model)
    # layer: q 128*128 + k,v 2*128*64 + o 128*128 = 49152; mlp 3*128*256 = 98304; norms 256
    assert arch.total_params() == 2 * (49152 + 98304 + 256) + 100 * 128 + 128


def test_unknown_model_is_a_config_error_naming_the_key():
    recipe = load_recipe(QWEN_1_5B, ["policy.model.hf_path=Qwen/Qwen2.5-1.5B-Instrct"])
    with pytest.raises(ConfigError, match=r"policy.model.hf_path: .*did you mean \"Qwen/Qwen2.5-1.5B-Instruct\""):
        make_plan(recipe)


# ---- published reference values ---------------------------------------------------------

def test_bytes_per_param_match_the_megatron_distributed_optimizer_table():
    # Megatron-LM docs: bf16 params + fp32 grads: 18 bytes/param, or 6 + 12/d distributed;
    # fp32 params + fp32 grads: 16, or 8 + 8/d.
    assert sum(bytes_per_param("bf16", False, False, 8)) == 18
    assert sum(bytes_per_param("bf16", False, True, 8)) == 6 + 12 / 8
    assert sum(bytes_per_param("fp32", False, False, 4)) == 16
    assert sum(bytes_per_param("fp32", False, True, 4)) == 8 + 8 / 4


def test_kv_cache_per_token_matches_the_commonly_quoted_sizes():
    # Llama-3 8B: 128 KiB per token; Llama-3 70B: 320 KiB per token (bf16, GQA with 8 KV heads).
    assert kv_bytes_per_token(CATALOG["meta-llama/Llama-3.1-8B-Instruct"], 1) == 128 * 1024
    assert kv_bytes_per_token(CATALOG["meta-llama/Llama-3.3-70B-Instruct"], 1) == 320 * 1024
    # TP8 over 8 KV heads: one head per GPU; TP16 replicates heads, it cannot go below one.
    assert kv_bytes_per_token(CATALOG["meta-llama/Llama-3.3-70B-Instruct"], 8) == 40 * 1024
    assert kv_bytes_per_token(CATALOG["meta-llama/Llama-3.3-70B-Instruct"], 16) == 40 * 1024


# ---- golden numbers by hand ------------------------------------------------------------

def test_golden_small_model_qwen_1_5b_tp1_dp8():
    plan = make_plan(load_recipe(QWEN_1_5B))
    P = 1_543_714_304            # published parameter count; tied embeddings, one stage holds all
    t = plan.training
    assert (plan.layout.tensor, plan.layout.pipeline, plan.layout.data) == (1, 1, 8)
    assert t.weights == 2 * P and t.gradients == 4 * P and t.optimizer == 12 * P / 8
    # per token and layer: 4h + 2 q_dim + 2 kv_dim + 3 ffn = 6144 + 3072 + 512 + 26880 elements, bf16,
    # sequence 2048 + 1024 tokens, 28 layers, one micro-batch in flight
    assert t.activations == 36608 * 2 * 3072 * 28
    assert t.logits == 10 * 3072 * 151936
    assert t.total == 25_764_304_128
    e = plan.engine
    assert e.kv_bytes_per_token == 2 * 28 * 2 * 128 * 2
    kv = 0.5 * 79.6 * GIB - 2 * P - 2 * GIB
    assert e.kv_tokens == int(kv // 28672) == 1_307_896
    assert e.sequences == 1_307_896 // 3072 == 425
    assert plan.fits


def test_golden_large_model_llama_70b_tp8_pp4_vp5_dp2():
    plan = make_plan(load_recipe(LLAMA_70B))
    t = plan.training
    assert (plan.layout.tensor, plan.layout.pipeline, plan.layout.data) == (8, 4, 2)
    layer = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192      # 855,654,400
    last_stage = (20 * layer + 128256 * 8192 + 8192) / 8                            # + output layer + final norm
    assert t.stage == "last" and t.params == last_stage == 2_270_471_168
    assert t.resident == (2 + 4 + 12 / 2) * last_stage
    tokens = 1024 + 4096
    kept = 2 * tokens * 8192 / 8 * 20            # recompute + sequence parallel: each layer's input
    one_layer = 2 * tokens * (4 * 8192 + 2 * 8192 + 2 * 1024 + 3 * 28672) / 8
    assert t.activations == kept + one_layer
    assert t.logits == 10 * tokens * 128256 / 8
    assert t.total == 31_673_069_568
    assert plan.fits


# ---- refusals and their suggestions ----------------------------------------------------

def test_refuses_70b_without_model_parallelism_and_suggests_a_layout():
    plan = make_plan(load_recipe(LLAMA_70B, ["policy.parallel.tensor=1", "policy.parallel.pipeline=1",
                                             "policy.parallel.virtual_pipeline=null"]))
    (message,) = [m for m in errors_of(plan) if m.startswith("error: policy.parallel:")]
    assert "training needs" in message and "H100-80GB has 79.6 GiB" in message
    # Neither TP nor PP alone is enough: the smallest model-parallel combination is named, and it fits.
    assert message.endswith("suggestion: use policy.parallel.tensor=4 pipeline=4 with recompute_activations=false")
    assert make_plan(load_recipe(LLAMA_70B, ["policy.parallel.tensor=4", "policy.parallel.pipeline=4",
                                             "policy.parallel.virtual_pipeline=null",
                                             "policy.recompute_activations=false"])).fits


def test_refusal_suggestion_is_a_layout_that_fits():
    plan = make_plan(load_recipe(LLAMA_8B, ["policy.parallel.tensor=1", "policy.parallel.sequence_parallel=false",
                                            "generation.sampling.max_new_tokens=8000", "data.max_prompt_tokens=1024"]))
    (message,) = [m for m in errors_of(plan) if m.startswith("error: policy.parallel:")]
    suggestion = message.split("suggestion: ")[1]
    # Recomputation alone would fit training but not the colocated engines beside the resident state.
    assert suggestion == "raise policy.parallel.tensor to 2 or raise policy.parallel.pipeline to 2"
    base = ["policy.parallel.tensor=1", "policy.parallel.sequence_parallel=false",
            "generation.sampling.max_new_tokens=8000", "data.max_prompt_tokens=1024"]
    assert not make_plan(load_recipe(LLAMA_8B, [*base, "policy.recompute_activations=true"])).fits
    for change in ("policy.parallel.tensor=2", "policy.parallel.pipeline=2"):
        assert make_plan(load_recipe(LLAMA_8B, [*base, change])).fits, change


def test_refuses_tensor_parallel_across_nodes_and_indivisible_kv_heads():
    plan = make_plan(load_recipe(LLAMA_8B, ["policy.parallel.tensor=16"]))
    assert any("tensor parallel 16 spans nodes (8 GPUs per node)" in m for m in errors_of(plan))
    plan = make_plan(load_recipe(QWEN_1_5B, ["policy.parallel.tensor=4"]))
    assert "error: policy.parallel.tensor: policy.model.num_query_groups=2 (KV heads) is not divisible by " \
           "policy.parallel.tensor=4; suggestion: use a tensor size that divides 2" in errors_of(plan)


def test_refuses_more_colocated_engines_than_gpus():
    plan = make_plan(load_recipe(QWEN_1_5B, ["generation.num_engines=16"]))
    assert "error: generation.num_engines: 16 engines x tensor_parallel 1 = 16 devices, but the cluster has 8; " \
           "suggestion: set generation.num_engines=8" in errors_of(plan)


def test_refuses_engine_without_room_for_one_sequence_and_names_the_tp_that_fits():
    plan = make_plan(load_recipe(LLAMA_70B, ["generation.tensor_parallel=1", "generation.num_engines=64"]))
    (message,) = [m for m in errors_of(plan) if "not one sequence" in m]
    assert message.endswith("suggestion: raise generation.tensor_parallel to 8 or raise generation.gpu_memory_utilization")


def test_refuses_colocated_engine_budget_beyond_what_training_leaves():
    plan = make_plan(load_recipe(QWEN_1_5B, ["generation.gpu_memory_utilization=0.95"]))
    (message,) = [m for m in errors_of(plan) if "colocated" in m]
    # resident = 7.5 P bytes = 10.78 GiB, reserve 3 GiB: (79.6 - 13.78) / 79.6 = 0.826 -> 0.82
    assert "lower generation.gpu_memory_utilization to 0.82" in message
    assert make_plan(load_recipe(QWEN_1_5B, ["generation.gpu_memory_utilization=0.82"])).fits


def test_refuses_fp8_on_a100_and_accepts_it_on_h100():
    assert make_plan(load_recipe(LLAMA_8B_FP8)).fits
    plan = make_plan(load_recipe(LLAMA_8B_FP8, ["cluster.gpu_type=A100-80GB"]))
    assert "error: policy.precision.fp8: FP8 needs Hopper-class GPUs and Transformer Engine; A100-80GB has no FP8; " \
           "suggestion: set policy.precision.fp8=null" in errors_of(plan)


def test_refuses_batches_that_do_not_split():
    plan = make_plan(load_recipe(QWEN_1_5B, ["trainer.mini_batches_per_step=3"]))
    assert any("2048 rollouts per step" in m and "3 mini-batches" in m for m in errors_of(plan))
    plan = make_plan(load_recipe(QWEN_1_5B, ["policy.micro_batch_size=3"]))
    assert any("a mini-batch of 512 rollouts does not split over data parallel 8 x micro_batch_size 3" in m
               for m in errors_of(plan))


def test_unknown_gpu_type_is_a_config_error_with_a_hint():
    with pytest.raises(ConfigError, match=r"cluster.gpu_type: unknown accelerator 'H100-80G'.*did you mean"):
        load_recipe(QWEN_1_5B, ["cluster.gpu_type=H100-80G"])
    # A kind the table lacks is planned with an explicit memory size.
    plan = make_plan(load_recipe(QWEN_1_5B, ["cluster.gpu_type=MI300X", "cluster.gpu_memory_gib=191.5"]))
    assert plan.device_gib == 191.5 and plan.fits


def test_cpu_cluster_shape_plans_without_device_limits(tmp_path):
    recipe = tmp_path / "cpu.yaml"
    recipe.write_text(f"defaults: {QWEN_1_5B}\ncluster: {{gpus_per_node: 0, cpu_workers: 2}}\n"
                      "trainer: {prompts_per_step: 4, rollouts_per_prompt: 4, mini_batches_per_step: 1}\n")
    plan = make_plan(load_recipe(recipe))
    assert plan.device == "CPU" and plan.engine is None and plan.fits
    assert (plan.layout.total_devices, plan.layout.data) == (2, 2)
    # 8 engines on 2 CPU workers is not an error: a CPU host has no device accounting.
    assert [f.key for f in plan.findings] == ["cluster.gpus_per_node"]
    assert plan.training.weights == 2 * 1_543_714_304 and plan.training.optimizer == 12 * 1_543_714_304 / 2


# ---- the command -----------------------------------------------------------------------

def test_gdpo_plan_prints_table_json_and_exits_1_with_the_reason(capsys):
    assert main(["plan", str(QWEN_1_5B)]) == 0
    out = capsys.readouterr().out
    assert "tensor 1 x pipeline 1 x data 8" in out and "FITS" in out and "sequences of 3072 tokens" in out
    assert main(["plan", str(QWEN_1_5B), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] and data["training_bytes"]["total"] == 25_764_304_128 and data["engine_bytes"]["sequences"] == 425
    assert main(["plan", str(LLAMA_8B), "policy.parallel.tensor=16"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "spans nodes" in out


def test_gdpo_plan_prints_the_placement_the_trainer_reserves(capsys):
    from gdpo_megatron.orchestration.placement import placement_shape

    assert main(["plan", str(LLAMA_8B)]) == 0
    out = capsys.readouterr().out
    assert "placement: 2 node(s) x 8 GPUs, engines colocated" in out
    assert "  node 0  GPU 0     policy-rank0, engine-0" in out
    assert "  node 1  GPU 7     policy-rank15, engine-15" in out
    main(["plan", str(LLAMA_8B), "generation.colocated=false", "generation.num_engines=4", "--json"])
    placement = json.loads(capsys.readouterr().out)["placement"]
    assert placement == placement_shape(load_recipe(LLAMA_8B, ["generation.colocated=false",
                                                               "generation.num_engines=4"])).to_dict()
    assert [(e["node"], e["gpus"]) for e in placement["engines"]] == [(0, [6]), (0, [7]), (1, [6]), (1, [7])]
    assert main(["plan", str(LLAMA_8B), "generation.num_engines=17"]) == 1
    assert "placement: error: generation: 17 colocated engines" in capsys.readouterr().out


def test_gdpo_plan_on_a_cpu_host_says_one_placement_mode(capsys, repo_root):
    # The engines line and the placement section describe the same mode.
    tiny = repo_root / "recipes/tiny/synthetic-gdpo-1n2c.yaml"
    assert main(["plan", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "(separate: a CPU slot each)" in out and "engines separate" in out and "colocated" not in out
    assert main(["plan", str(tiny), "generation.colocated=true"]) == 0
    out = capsys.readouterr().out
    assert "(colocated, asleep while training)" in out and "engines colocated" in out
