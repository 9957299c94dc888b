"""Every shipped recipe loads, validates, fits its cluster per the planner, and is listed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gdpo_megatron.cli import main
from gdpo_megatron.config import load_recipe
from gdpo_megatron.config.schema import to_dict
from gdpo_megatron.planner import make_plan
from gdpo_megatron.recipe_index import index_recipes, recipe_files
from gdpo_megatron.rewards.registry import REWARDS

ROOT = Path(__file__).resolve().parents[2] / "recipes"
ALL = recipe_files(ROOT)
GPU = [p for p in ALL if p.parent.name != "tiny"]
NAME = re.compile(r"^(?P<task>[a-z-]+?)-(?P<algorithm>gdpo|grpo)(?P<gfpo>-gfpo)?(?:-fp8)?-(?P<nodes>\d+)n(?P<devices>\d+)"
                  r"(?P<kind>[gc])\.yaml$")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_issue_workloads_are_all_there():
    names = {rel(p) for p in GPU}
    for expected in ["qwen2.5-1.5b-instruct/tool-calling-gdpo-1n8g.yaml", "qwen2.5-1.5b-instruct/tool-calling-grpo-1n8g.yaml",
                     "qwen2.5-3b-instruct/tool-calling-gdpo-1n8g.yaml", "qwen2.5-3b-instruct/tool-calling-grpo-1n8g.yaml",
                     "deepseek-r1-distill-qwen-1.5b/math-gdpo-1n8g.yaml",
                     "deepseek-r1-distill-qwen-1.5b/math-conditioned-gdpo-1n8g.yaml",
                     "deepseek-r1-distill-qwen-7b/math-gdpo-2n8g.yaml", "deepseek-r1-distill-qwen-7b/code-gdpo-2n8g.yaml",
                     "qwen3-4b-instruct-2507/math-gdpo-1n8g.yaml", "llama-3.1-8b-instruct/tool-calling-gdpo-fp8-2n8g.yaml",
                     "qwen2.5-32b-instruct/math-gdpo-4n8g.yaml", "llama-3.3-70b-instruct/math-gdpo-8n8g.yaml"]:
        assert expected in names


@pytest.mark.parametrize("path", ALL, ids=rel)
def test_recipe_loads_validates_and_fits(path):
    recipe = load_recipe(path)
    for reward in recipe.algorithm.rewards:
        assert reward.function_name in REWARDS, f"{rel(path)}: reward function {reward.function_name!r} is not registered"
    plan = make_plan(recipe)
    assert plan.fits, "\n".join(str(f) for f in plan.errors)


@pytest.mark.parametrize("path", GPU, ids=rel)
def test_file_name_matches_task_algorithm_and_cluster_shape(path):
    match = NAME.match(path.name)
    assert match, f"{path.name} does not follow <task>-<algorithm>-<N>n<G>g.yaml"
    recipe = load_recipe(path)
    assert recipe.algorithm.estimator == match["algorithm"]
    if match["kind"] == "c":  # CPU recipes: <N>n<C>c names CPU cores, and no GPU is asked for
        assert (recipe.cluster.nodes, recipe.cluster.gpus_per_node) == (int(match["nodes"]), 0)
    else:
        assert (recipe.cluster.nodes, recipe.cluster.gpus_per_node) == (int(match["nodes"]), int(match["devices"]))
    assert recipe.data.task == match["task"].replace("-conditioned", "").replace("-", "_")
    assert ("-fp8-" in path.name) == (recipe.policy.precision.fp8 is not None)
    assert bool(match["gfpo"]) == recipe.algorithm.group_filter.enabled


def test_paper_hyperparameters_reach_the_resolved_recipes():
    tool = load_recipe(ROOT / "qwen2.5-1.5b-instruct/tool-calling-gdpo-1n8g.yaml")
    assert (tool.trainer.prompts_per_step, tool.trainer.rollouts_per_prompt, tool.trainer.mini_batches_per_step) == (512, 4, 4)
    assert (tool.policy.optimizer.lr, tool.algorithm.loss.kl_coef) == (1e-6, 0.001)
    assert (tool.data.max_prompt_tokens, tool.generation.sampling.max_new_tokens) == (2048, 1024)
    math = load_recipe(ROOT / "deepseek-r1-distill-qwen-1.5b/math-conditioned-gdpo-1n8g.yaml")
    assert (math.trainer.prompts_per_step, math.trainer.rollouts_per_prompt, math.trainer.mini_batches_per_step) == (512, 16, 8)
    assert (math.algorithm.loss.clip_low, math.algorithm.loss.clip_high, math.algorithm.loss.kl_coef) == (0.2, 0.28, 0.0005)
    assert math.algorithm.loss.kl_type == "k2" and math.generation.sampling.max_new_tokens == 8000
    length = math.algorithm.rewards[1]
    assert length.args == {"max_tokens": 4000} and (length.condition.reward, length.condition.threshold) == ("correctness", 1.0)
    code = load_recipe(ROOT / "deepseek-r1-distill-qwen-7b/code-gdpo-2n8g.yaml")
    assert [r.function_name for r in code.algorithm.rewards] == ["code_pass", "length", "code_no_bug"]


@pytest.mark.parametrize("gdpo", [p for p in GPU if "-gdpo-" in p.name and p.with_name(p.name.replace("-gdpo-", "-grpo-")).exists()],
                         ids=rel)
def test_grpo_twin_differs_only_in_estimator_and_name(gdpo):
    a = to_dict(load_recipe(gdpo))
    b = to_dict(load_recipe(gdpo.with_name(gdpo.name.replace("-gdpo-", "-grpo-"))))
    assert (a["algorithm"].pop("estimator"), b["algorithm"].pop("estimator")) == ("gdpo", "grpo")
    assert a.pop("name").replace("gdpo", "grpo") == b.pop("name")
    assert a == b


def test_gdpo_recipes_lists_every_recipe_with_its_shape(capsys):
    rows = {r.path: r for r in index_recipes(ROOT)}
    assert set(rows) == {rel(p) for p in ALL} and not any(r.error for r in rows.values())
    big = rows["llama-3.3-70b-instruct/math-gdpo-8n8g.yaml"]
    assert (big.model, big.task, big.algorithm, big.shape, big.layout) == (
        "meta-llama/Llama-3.3-70B-Instruct", "math", "gdpo", "8n x 8 H100-80GB", "TP8 PP4, vLLM 8xTP8 colocated")
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-32b-instruct/math-gdpo-4n8g.yaml" in out and "TP8 PP2, vLLM 8xTP4 colocated" in out


@pytest.mark.parametrize("gfpo", [p for p in ALL if "-gfpo-" in p.name], ids=rel)
def test_gfpo_variant_differs_from_its_base_only_in_the_group_filter(gfpo):
    a = to_dict(load_recipe(gfpo))
    b = to_dict(load_recipe(gfpo.with_name(gfpo.name.replace("-gfpo-", "-"))))
    assert a["algorithm"].pop("group_filter")["metric"] is not None
    assert b["algorithm"].pop("group_filter")["metric"] is None
    assert a.pop("name") == b.pop("name") + "-gfpo"
    a["trainer"].pop("rollouts_per_prompt"), b["trainer"].pop("rollouts_per_prompt")  # G' may be larger
    assert a == b
