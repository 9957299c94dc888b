"""Placement plans from the recipe's cluster section (pure), and RayCluster clean-up on a failed start."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from gdpo_megatron.config.cluster import ClusterConfig
from gdpo_megatron.config.generation import GenerationConfig
from gdpo_megatron.config.policy import ParallelConfig
from gdpo_megatron.orchestration.placement import PlacementError, format_placement, placement_shape


def _recipe(cluster, generation=None, parallel=None):
    return SimpleNamespace(name="t", cluster=cluster, generation=generation or GenerationConfig(),
                           policy=SimpleNamespace(parallel=parallel or ParallelConfig()))


def test_cpu_host_one_slot_per_policy_worker_engine_and_rewards():
    shape = placement_shape(_recipe(ClusterConfig(nodes=1, gpus_per_node=0, cpu_workers=2),
                                    GenerationConfig(num_engines=1, colocated=False)))
    assert shape.policy_world_size == 2
    assert shape.bundles == [{"CPU": 1.0}] * 4  # 2 policy ranks, 1 engine, 1 reward worker
    assert [s.bundle for s in shape.policy] == [0, 1] and shape.engine_slots[0].bundles == (2,)
    assert shape.reward_bundle == 3


def test_cpu_two_nodes_one_rank_and_one_engine_per_node():
    shape = placement_shape(_recipe(ClusterConfig(nodes=2, gpus_per_node=0, cpu_workers=1),
                                    GenerationConfig(num_engines=2, colocated=False)))
    assert [(s.rank, s.node) for s in shape.policy] == [(0, 0), (1, 1)]
    assert [(e.index, e.node) for e in shape.engine_slots] == [(0, 0), (1, 1)]
    assert [b.node for b in shape.bundle_list] == [0, 0, 1, 1, 0]  # node-major, rewards last on node 0
    colocated = placement_shape(_recipe(ClusterConfig(nodes=1, gpus_per_node=0, cpu_workers=2),
                                        GenerationConfig(num_engines=2, colocated=True)))
    assert colocated.bundles == [{"CPU": 2.0}] * 2 + [{"CPU": 1.0}]
    assert [e.bundles for e in colocated.engine_slots] == [(0,), (1,)]


def test_gpu_colocated_two_nodes():
    shape = placement_shape(_recipe(ClusterConfig(nodes=2, gpus_per_node=8),
                                    GenerationConfig(num_engines=8, tensor_parallel=2, colocated=True),
                                    ParallelConfig(tensor=2, pipeline=2)))
    assert shape.policy_world_size == 16
    assert shape.bundles == [{"CPU": 2.0, "GPU": 1.0}] * 16 + [{"CPU": 1.0}]
    assert [(s.node, s.gpu) for s in shape.policy] == [(n, g) for n in range(2) for g in range(8)]
    # Engine e on the GPUs of ranks 2e, 2e+1; its actor holds no GPU, its two vLLM workers half of each.
    assert [(e.node, e.gpus, e.bundles) for e in shape.engine_slots[3:5]] == [(0, (6, 7), (6, 7)), (1, (0, 1), (8, 9))]
    assert {(e.num_gpus, e.worker_gpus) for e in shape.engine_slots} == {(0.0, 0.5)}
    assert shape.engine_slots[4].vllm_env() == {"VLLM_RAY_BUNDLE_INDICES": "8,9", "VLLM_RAY_PER_WORKER_GPUS": "0.5"}
    assert {s.num_gpus for s in shape.policy} == {0.5}


def test_gpu_split_engines_take_their_own_gpus():
    shape = placement_shape(_recipe(ClusterConfig(nodes=1, gpus_per_node=8),
                                    GenerationConfig(num_engines=2, tensor_parallel=2, colocated=False),
                                    ParallelConfig(tensor=2)))
    assert (shape.policy_world_size, shape.engine_bundles) == (4, 4)
    assert shape.bundles == [{"CPU": 1.0, "GPU": 1.0}] * 8 + [{"CPU": 1.0}]
    assert [e.gpus for e in shape.engine_slots] == [(4, 5), (6, 7)]
    assert {s.num_gpus for s in shape.policy} == {1.0} and {e.worker_gpus for e in shape.engine_slots} == {1.0}


def test_gpu_split_over_two_nodes_keeps_engines_on_every_node():
    shape = placement_shape(_recipe(ClusterConfig(nodes=2, gpus_per_node=4),
                                    GenerationConfig(num_engines=4, colocated=False)))
    assert [(s.node, s.gpu) for s in shape.policy] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [(e.node, e.gpus, e.num_gpus) for e in shape.engine_slots] == [
        (0, (2,), 1.0), (0, (3,), 1.0), (1, (2,), 1.0), (1, (3,), 1.0)]
    text = format_placement(shape)
    assert "node 1  GPU 3     engine-3" in text and "node 0  GPU 0     policy-rank0" in text


@pytest.mark.parametrize("cluster, generation, parallel, message", [
    (ClusterConfig(nodes=1, gpus_per_node=8), GenerationConfig(num_engines=1), ParallelConfig(tensor=3),
     r"policy.parallel: policy worker count 8 is not divisible by policy.parallel.tensor=3 \* "
     r"policy.parallel.pipeline=1 = 3"),
    (ClusterConfig(nodes=1, gpus_per_node=4), GenerationConfig(num_engines=2, tensor_parallel=2, colocated=False),
     ParallelConfig(), r"generation: 2 engines x tensor_parallel 2 use all 4 GPUs"),
    (ClusterConfig(nodes=1, gpus_per_node=0, cpu_workers=3), GenerationConfig(colocated=False),
     ParallelConfig(pipeline=2), r"policy worker count 3 is not divisible by .*; the policy workers are "
     r"cluster.nodes x cpu_workers"),
    (ClusterConfig(nodes=1, gpus_per_node=4), GenerationConfig(num_engines=5), ParallelConfig(),
     r"generation: 5 colocated engines x tensor_parallel 1 need 5 GPUs, the cluster has 4"),
    (ClusterConfig(nodes=2, gpus_per_node=6), GenerationConfig(num_engines=2, tensor_parallel=4), ParallelConfig(),
     r"generation.tensor_parallel: 4 does not divide cluster.gpus_per_node 6"),
    (ClusterConfig(nodes=2, gpus_per_node=4), GenerationConfig(tensor_parallel=8), ParallelConfig(),
     r"generation.tensor_parallel: 8 GPUs per engine exceed cluster.gpus_per_node 4"),
])
def test_impossible_shapes_name_the_keys(cluster, generation, parallel, message):
    with pytest.raises(PlacementError, match=message):
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
