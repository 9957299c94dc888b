"""Which refit transport a recipe selects, and the refusals that name the key."""

from __future__ import annotations

import pytest

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.recipe import RecipeConfig
from gdpo_megatron.config.schema import build
from gdpo_megatron.generation.transports import TRANSPORTS, resolve_transport
from gdpo_megatron.orchestration.refit import REFITTERS, colocated_channels


def generation(gpus_per_node: int = 0, **refit_and_placement):
    transport = refit_and_placement.pop("transport", "auto")
    return build(RecipeConfig, {"cluster": {"gpus_per_node": gpus_per_node},
                                "generation": {"refit": {"transport": transport}, **refit_and_placement}}).generation


def test_auto_resolves_by_host_and_placement():
    assert resolve_transport(generation(colocated=True), on_gpu=True) == "cuda_ipc"
    assert resolve_transport(generation(colocated=False), on_gpu=True) == "collective"
    assert resolve_transport(generation(colocated=False), on_gpu=False) == "collective"
    assert resolve_transport(generation(colocated=True, backend="megatron"), on_gpu=True) == "object_store"


def test_explicit_transports_and_every_name_has_a_driver():
    assert sorted(TRANSPORTS) == sorted(REFITTERS) == ["collective", "cuda_ipc", "object_store"]
    for name in ("collective", "object_store"):
        assert resolve_transport(generation(colocated=False, transport=name), on_gpu=False) == name
        assert resolve_transport(generation(colocated=False, transport=name), on_gpu=True) == name
    assert resolve_transport(generation(colocated=True, transport="cuda_ipc"), on_gpu=True) == "cuda_ipc"


def test_cuda_ipc_on_a_cpu_host_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"generation\.refit\.transport: cuda_ipc needs GPUs"):
        resolve_transport(generation(colocated=True, transport="cuda_ipc"), on_gpu=False)
    with pytest.raises(ConfigError, match=r"generation\.refit\.transport"):
        build(RecipeConfig, {"generation": {"colocated": False, "refit": {"transport": "cuda_ipc"}}})
    with pytest.raises(ConfigError, match=r"generation\.refit\.transport: collective feeds vLLM"):
        build(RecipeConfig, {"generation": {"backend": "megatron", "colocated": False,
                                            "refit": {"transport": "collective"}}})


def test_collective_to_colocated_gpu_engines_is_a_config_error_naming_the_key():
    # NCCL refuses two ranks of one group on one GPU: the exporter and its colocated engine worker.
    with pytest.raises(ConfigError, match=r"generation\.refit\.transport: collective cannot reach colocated GPU"):
        resolve_transport(generation(colocated=True, transport="collective"), on_gpu=True)
    with pytest.raises(ConfigError, match=r"generation\.refit\.transport: collective cannot reach colocated GPU"):
        build(RecipeConfig, {"cluster": {"gpus_per_node": 8},
                             "generation": {"colocated": True, "refit": {"transport": "collective"}}})
    # Separate GPU engines, and colocated engines on a CPU host (gloo allows it), are fine.
    assert resolve_transport(generation(colocated=False, transport="collective"), on_gpu=True) == "collective"
    assert resolve_transport(generation(colocated=True, transport="collective"), on_gpu=False) == "collective"
    build(RecipeConfig, {"cluster": {"gpus_per_node": 0},
                         "generation": {"colocated": True, "refit": {"transport": "collective"}}})


def test_cpu_vllm_backend_refuses_cuda_ipc_before_starting_an_engine():
    from gdpo_megatron.generation.vllm_backend import check_placement

    recipe = build(RecipeConfig, {"generation": {"colocated": True, "refit": {"transport": "cuda_ipc"}}})
    with pytest.raises(ConfigError, match=r"generation\.refit\.transport: cuda_ipc needs GPUs"):
        check_placement(recipe, on_gpu=False)


def test_colocated_channels_pair_engine_workers_with_the_policy_rank_on_their_gpu():
    channels = colocated_channels(["g0", "g1", "g2", "g3"], [["g2", "g3"], ["g0", "g1"]])
    assert channels.receivers == [["policy2", "policy3"], ["policy0", "policy1"]]
    assert channels.senders == {"g0", "g1", "g2", "g3"}
    with pytest.raises(RuntimeError, match="engine 0 runs on GPU"):
        colocated_channels(["g0"], [["g7"]])
