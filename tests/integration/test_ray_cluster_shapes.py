"""Placement shapes from the recipe's cluster section (pure), and RayCluster clean-up on a failed start."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from gdpo_megatron.config.cluster import ClusterConfig
from gdpo_megatron.config.generation import GenerationConfig
from gdpo_megatron.config.policy import ParallelConfig
from gdpo_megatron.orchestration.cluster import ClusterError, placement_shape


def _recipe(cluster, generation=None, parallel=None):
    return SimpleNamespace(name="t", cluster=cluster, generation=generation or GenerationConfig(),
                           policy=SimpleNamespace(parallel=parallel or ParallelConfig()))


def test_cpu_host_one_slot_per_policy_worker_engine_and_rewards():
    shape = placement_shape(_recipe(ClusterConfig(nodes=1, gpus_per_node=0, cpu_workers=2),
                                    GenerationConfig(num_engines=1)))
    assert shape.policy_world_size == 2
    assert shape.bundles == [{"CPU": 1.0}] * 4  # 2 policy ranks, 1 engine, 1 reward worker
    assert shape.reward_bundle == 3


def test_gpu_colocated_two_nodes():
    shape = placement_shape(_recipe(ClusterConfig(nodes=2, gpus_per_node=8),
                                    GenerationConfig(num_engines=8, tensor_parallel=2, colocated=True),
                                    ParallelConfig(tensor=2, pipeline=2)))
    assert shape.policy_world_size == 16
    assert shape.bundles == [{"CPU": 2.0, "GPU": 1.0}] * 16 + [{"CPU": 1.0}]


def test_gpu_split_engines_take_their_own_gpus():
    shape = placement_shape(_recipe(ClusterConfig(nodes=1, gpus_per_node=8),
                                    GenerationConfig(num_engines=2, tensor_parallel=2, colocated=False),
                                    ParallelConfig(tensor=2)))
    assert (shape.policy_world_size, shape.engine_bundles) == (4, 4)
    assert shape.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 8 + [{"CPU": 1.0}]


@pytest.mark.parametrize("cluster, generation, parallel, message", [
    (ClusterConfig(nodes=1, gpus_per_node=8), GenerationConfig(num_engines=1), ParallelConfig(tensor=3),
     r"policy.parallel: policy worker count 8 is not divisible by policy.parallel.tensor=3 \* "
     r"policy.parallel.pipeline=1 = 3"),
    (ClusterConfig(nodes=1, gpus_per_node=4), GenerationConfig(num_engines=2, tensor_parallel=2, colocated=False),
     ParallelConfig(), r"generation: 2 engines x tensor_parallel 2 use all 4 GPUs"),
    (ClusterConfig(nodes=1, gpus_per_node=0, cpu_workers=3), GenerationConfig(), ParallelConfig(pipeline=2),
     r"policy worker count 3 is not divisible by .*; the policy workers are cluster.nodes x cpu_workers"),
])
def test_impossible_shapes_name_the_keys(cluster, generation, parallel, message):
    with pytest.raises(ClusterError, match=message):
        placement_shape(_recipe(cluster, generation, parallel))


def test_failed_start_removes_symlink_and_restores_env_simulated_init_failure(tmp_path, monkeypatch):
    """ray.init failing must not leave the /tmp link or the token. The failure is simulated
    (ray.init replaced by a raiser): a real failed start leaves half-started Ray processes."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray connection is open in this process")
    from gdpo_megatron.orchestration.cluster import RayCluster

    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    seen = {}

    def failing_init(**kwargs):
        seen.update(kwargs, token=os.environ.get("RAY_AUTH_TOKEN"))
        raise RuntimeError("simulated start failure")

    monkeypatch.setattr(ray, "init", failing_init)
    handle = RayCluster(tmp_path / ("long-directory-name-" * 3) / "ray", num_cpus=3)
    with pytest.raises(RuntimeError, match="simulated start failure"):
        with handle:
            pass
    assert seen["num_cpus"] == 3 and seen["_temp_dir"] == str(handle.temp_dir) and len(seen["token"]) == 64
    assert str(handle.temp_dir).startswith("/tmp/gdpo-ray-") and not handle.temp_dir.is_symlink()
    assert "RAY_AUTH_TOKEN" not in os.environ
    assert not ray.is_initialized()
