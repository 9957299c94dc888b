"""The planner accepts exactly the layouts the model builder builds.

Over a grid of models x (tensor, pipeline, virtual pipeline, first/last stage layers), the
verdict of `gdpo plan` (no error on a layout key) equals the verdict of the builder's own
check (`validate_layout` as `build_model` calls it, on a CUDA host so that sequence parallel
is not refused for the host), with the same first message; and the planner sizes memory
with the builder's stage split. tests/distributed/test_layout_build.py builds real
megatron-core models for uneven splits.
"""

from __future__ import annotations

import itertools

import pytest

from gdpo_megatron.config import ConfigError
from gdpo_megatron.config.recipe import RecipeConfig
from gdpo_megatron.config.schema import build
from gdpo_megatron.parallel_layout import stage_layer_counts, validate_layout
from gdpo_megatron.planner import make_plan
from gdpo_megatron.policy.model import resolve_model_config

MODELS = [
    dict(num_layers=8, hidden_size=64, ffn_hidden_size=96, num_attention_heads=8, num_query_groups=2),
    dict(num_layers=7, hidden_size=96, ffn_hidden_size=144, num_attention_heads=6, num_query_groups=3),
    dict(num_layers=28, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=4),
]
TENSOR = (1, 2, 3, 4)
PIPELINE = (1, 2, 3, 4, 8)
VIRTUAL = (None, 2)
STAGES = [(None, None), (2, None), (None, 3), (2, 2), (3, 1), (0, None)]
LAYOUT_KEYS = ("policy.parallel", "policy.model")


def _recipe(model: dict, tp: int, pp: int, vp, first, last, sequence_parallel: bool = False) -> RecipeConfig:
    parallel = {"tensor": tp, "pipeline": pp, "virtual_pipeline": vp, "first_stage_layers": first,
                "last_stage_layers": last, "sequence_parallel": sequence_parallel}
    return build(RecipeConfig, {
        "policy": {"model": {"family": "llama", "vocab_size": 128, "max_position_embeddings": 4096, **model},
                   "parallel": parallel, "micro_batch_size": 1},
        "trainer": {"prompts_per_step": 8, "rollouts_per_prompt": 4, "mini_batches_per_step": 1},
        "generation": {"sampling": {"max_new_tokens": 16}},
        "data": {"max_prompt_tokens": 16},
        # a CPU host with exactly tensor x pipeline workers: one data-parallel replica
        "cluster": {"nodes": 1, "gpus_per_node": 0, "cpu_workers": tp * pp},
    })


def _grid():
    for model, tp, pp, vp, (first, last) in itertools.product(MODELS, TENSOR, PIPELINE, VIRTUAL, STAGES):
        yield model, tp, pp, vp, first, last


def _builder_verdict(recipe: RecipeConfig):
    try:
        validate_layout(resolve_model_config(recipe.policy), recipe.policy.parallel,
                        world_size=recipe.cluster.cpu_workers, cuda_available=True)
    except ConfigError as exc:
        return str(exc)
    return None


def _planner_verdict(recipe: RecipeConfig):
    plan = make_plan(recipe)
    layout_errors = [f for f in plan.errors if f.key.startswith(LAYOUT_KEYS)]
    if not layout_errors:
        return None, plan
    first = layout_errors[0]
    return first.message + (f"; {first.suggestion}" if first.suggestion else ""), plan


def test_planner_and_builder_agree_over_a_grid_of_layouts():
    accepted = rejected = 0
    for model, tp, pp, vp, first, last in _grid():
        recipe = _recipe(model, tp, pp, vp, first, last)
        builder = _builder_verdict(recipe)
        planner, plan = _planner_verdict(recipe)
        where = (model["num_layers"], tp, pp, vp, first, last)
        assert planner == builder, where
        if builder is None:
            accepted += 1
            assert plan.training is not None and plan.fits, where
        else:
            rejected += 1
    assert accepted > 50 and rejected > 50  # the grid exercises both sides


def test_uneven_pipeline_the_builder_accepts_is_planned():
    # 28 layers over 8 stages: 2 + 6 x 4 + 2 (the even split is refused with a hint)
    recipe = _recipe(MODELS[2], 1, 8, None, 2, 2)
    assert _builder_verdict(recipe) is None
    planner, plan = _planner_verdict(recipe)
    assert planner is None and plan.fits
    even, _ = _planner_verdict(_recipe(MODELS[2], 1, 8, None, None, None))
    assert even.startswith("policy.model.num_layers=28 is not divisible by policy.parallel.pipeline=8")
    assert "policy.parallel.first_stage_layers" in even


def test_memory_follows_the_stage_split():
    """The planner sizes each stage with the builder's layer counts: [2, 6] over two stages puts
    six layers, the output layer and the final norm on the last stage."""
    from gdpo_megatron.model_catalog import resolve_arch

    recipe = _recipe(MODELS[0], 1, 2, None, 2, None)
    assert stage_layer_counts(8, recipe.policy.parallel) == [2, 6]
    arch = resolve_arch(recipe.policy.model)
    training = make_plan(recipe).training
    assert training.stage == "last"
    assert training.params == 6 * arch.layer_params() + arch.embedding_params() + arch.hidden_size
    even = make_plan(_recipe(MODELS[0], 1, 2, None, None, None)).training  # [4, 4]: the first stage,
    assert (even.stage, even.params) == ("first", 4 * arch.layer_params() + arch.embedding_params())  # more in flight


def test_sequence_parallel_rules_agree_and_the_host_rule_is_the_builders_alone():
    # tensor 1: both refuse; tensor 2: both accept on a CUDA host; on a CPU host only the builder refuses
    for tp, expected_refusal in ((1, True), (2, False)):
        recipe = _recipe(MODELS[0], tp, 1, None, None, None, sequence_parallel=True)
        assert (_builder_verdict(recipe) is not None) == expected_refusal
        assert (_planner_verdict(recipe)[0] is not None) == expected_refusal
    recipe = _recipe(MODELS[0], 2, 1, None, None, None, sequence_parallel=True)
    with pytest.raises(ConfigError, match="sequence_parallel needs CUDA"):
        validate_layout(resolve_model_config(recipe.policy), recipe.policy.parallel, 2, cuda_available=False)
