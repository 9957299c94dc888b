"""Uneven pipeline splits the planner accepts are built by real megatron-core (gloo, 2 processes).

Each rank builds the model and reports how many transformer layers its chunk holds; the
per-stage counts must equal `stage_layer_counts`, the split the planner sizes memory with.
(That the builder refuses exactly what the planner refuses is tests/unit/test_layout_equivalence.py:
both call the same parallel_layout functions, which build_model runs before building.)
"""

from __future__ import annotations

import pytest

from gdpo_megatron.config.policy import PolicyConfig
from gdpo_megatron.config.schema import build
from gdpo_megatron.distributed.spawn import SpawnContext, spawn_local
from gdpo_megatron.parallel_layout import stage_layer_counts

MODEL = {"family": "llama", "num_layers": 5, "hidden_size": 32, "ffn_hidden_size": 64, "num_attention_heads": 4,
         "num_query_groups": 2, "vocab_size": 61, "max_position_embeddings": 64}


def _policy(parallel: dict) -> PolicyConfig:
    return build(PolicyConfig, {"model": MODEL, "parallel": parallel, "precision": {"dtype": "fp32"}})


UNEVEN = [{"pipeline": 2, "first_stage_layers": 2}, {"pipeline": 2, "last_stage_layers": 1}]  # [2, 3], [4, 1]


def _build_worker(ctx: SpawnContext, layouts: list[dict]):
    from megatron.core import parallel_state as mpu

    from gdpo_megatron.distributed.setup import init_distributed
    from gdpo_megatron.policy.model import build_model, unwrap

    init_distributed(_policy(layouts[0]).parallel)  # every layout here is pipeline 2
    layers = [sum(len(unwrap(c).decoder.layers) for c in build_model(_policy(layout))) for layout in layouts]
    return mpu.get_pipeline_model_parallel_rank(), layers


@pytest.mark.slow
def test_uneven_pipeline_builds_with_the_planned_stage_split():
    results = sorted(spawn_local(_build_worker, 2, args=(UNEVEN,)))
    for i, layout in enumerate(UNEVEN):
        expected = stage_layer_counts(MODEL["num_layers"], _policy(layout).parallel)
        assert [layers[i] for _, layers in results] == expected, layout
