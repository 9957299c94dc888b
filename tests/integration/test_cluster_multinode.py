"""Placement, device selection, rendezvous address and failure reports on a simulated 2-node GPU cluster.

Two real Ray nodes on this host (`ray.cluster_utils.Cluster`), each with its own loopback
address (127.0.0.2, 127.0.0.3) and 4 declared GPUs: Ray then assigns GPU ids and sets
CUDA_VISIBLE_DEVICES per actor exactly as on a real node, and an address taken from the
wrong node would differ. The GPUs themselves do not exist, so nothing here touches CUDA;
engines are stood in for by a probe actor with the engine's options (starting vLLM needs a
GPU), and a tensor-parallel engine's vLLM workers by probes scheduled the way vLLM's Ray
executor schedules them (`VLLM_RAY_BUNDLE_INDICES`, `VLLM_RAY_PER_WORKER_GPUS`).
"""

from __future__ import annotations

import os
import socket
import time

import pytest

ray = pytest.importorskip("ray")

from helpers.ray_nodes import simulated_ray_nodes  # noqa: E402
from gdpo_megatron.config import load_recipe  # noqa: E402
from gdpo_megatron.orchestration.cluster import placement_for  # noqa: E402
from gdpo_megatron.orchestration.failures import WorkerFailure, get_all  # noqa: E402

pytestmark = pytest.mark.slow

RECIPE = "recipes/tiny/synthetic-gdpo-1n2c.yaml"
NODES = ("127.0.0.2", "127.0.0.3")
TWO_BY_FOUR = ["cluster.nodes=2", "cluster.gpus_per_node=4", "cluster.gpu_type=H100-80GB"]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    if ray.is_initialized():
        pytest.skip("a Ray connection is already open in this process")
    # Each node's processes see its 4 GPUs, as under Slurm; and Ray is told to blank
    # CUDA_VISIBLE_DEVICES for zero-GPU actors, as older Ray releases did by default.
    node_env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    with simulated_ray_nodes(tmp_path_factory.mktemp("ray"), NODES, num_cpus=10, num_gpus=4,
                             node_env=node_env) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            yield cluster
        finally:
            ray.shutdown()


@ray.remote
class Probe:
    """Reports what Ray gave it, like the real workers' `where()`."""

    def where(self):
        from gdpo_megatron.orchestration.devices import current_placement

        return current_placement().to_dict()

    def crash(self):
        os._exit(1)


def _start(repo_root, overrides):
    from gdpo_megatron.config.schema import to_dict
    from gdpo_megatron.orchestration.policy_worker import PolicyWorker

    recipe = load_recipe(repo_root / RECIPE, [*TWO_BY_FOUR, *overrides])
    plan = placement_for(recipe, timeout_s=60)
    data = to_dict(recipe)
    world = plan.policy_world_size
    policy = [ray.remote(PolicyWorker).options(**plan.policy_options(r), name=f"policy-rank{r}").remote(data, r, world)
              for r in range(world)]
    engines = [Probe.options(**plan.engine_options(e), name=f"engine-{e}").remote() for e in range(plan.num_engines)]
    # vLLM's Ray executor, given VLLM_RAY_BUNDLE_INDICES / VLLM_RAY_PER_WORKER_GPUS, starts one worker
    # per listed bundle with that GPU share; probes scheduled the same way show which GPUs those get.
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    engine_workers = []
    for e in range(plan.num_engines):
        env = plan.engine_env(e)
        bundles = [int(b) for b in env["VLLM_RAY_BUNDLE_INDICES"].split(",")] if env else []
        share = float(env.get("VLLM_RAY_PER_WORKER_GPUS", 0))
        engine_workers.append([Probe.options(num_cpus=0, num_gpus=share, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=plan.group, placement_group_bundle_index=b)).remote() for b in bundles])
    places = {
        "policy": ray.get([w.where.remote() for w in policy]),
        "engines": ray.get([e.where.remote() for e in engines]),
        "engine_workers": [ray.get([w.where.remote() for w in workers]) for workers in engine_workers],
        "rendezvous": ray.get(policy[0].rendezvous_address.remote()),
    }
    return plan, places, [*policy, *engines, *(w for ws in engine_workers for w in ws)]


def _cleanup(plan, actors):
    for actor in actors:
        ray.kill(actor)
    plan.remove()


def _gpu(place):
    (gpu,) = place["gpu_ids"]
    return place["node_ip"], gpu


def _check_policy(plan, places):
    assert plan.node_addresses == list(NODES)  # node 0 of the plan is the head, node 1 the other
    for rank, place in enumerate(places["policy"]):
        slot = plan.shape.policy[rank]
        assert place["node_ip"] == NODES[slot.node], rank
        assert len(place["gpu_ids"]) == 1 and place["cuda_visible_devices"] == place["gpu_ids"][0]
        assert place["device_index"] == 0  # its own GPU is ordinal 0 of what it sees, whatever its rank
    assert len({_gpu(p) for p in places["policy"]}) == len(places["policy"])  # one GPU per rank
    host, port = places["rendezvous"]
    assert host == NODES[0]  # rank 0's node address, asked of rank 0
    with socket.socket() as sock:
        sock.bind((host, port))  # a port free on that node


def test_colocated_two_nodes_engines_share_their_policy_ranks_gpus(two_nodes, repo_root):
    # 4 engines x TP2 over 8 GPUs: engine e shares the GPUs of policy ranks 2e, 2e+1.
    plan, places, actors = _start(repo_root, ["generation.colocated=true", "generation.num_engines=4",
                                              "generation.tensor_parallel=2"])
    try:
        assert plan.policy_world_size == 8
        _check_policy(plan, places)
        assert [p["node_ip"] for p in places["policy"]] == [NODES[0]] * 4 + [NODES[1]] * 4
        policy_gpu = [_gpu(p) for p in places["policy"]]
        engine_gpus = []
        for e, (engine, workers) in enumerate(zip(places["engines"], places["engine_workers"])):
            assert not engine["gpu_ids"]  # the engine actor holds no GPU; its two vLLM workers do
            # ... but it drives a GPU engine, so it still sees its node's GPUs (not blanked by Ray).
            assert engine["cuda_visible_devices"] == "0,1,2,3"
            assert engine["node_ip"] == NODES[e // 2]
            gpus = [_gpu(w) for w in workers]
            assert gpus == policy_gpu[2 * e: 2 * e + 2]
            assert all(w["device_index"] == 0 for w in workers)
            engine_gpus.extend(gpus)
        assert len(set(engine_gpus)) == len(engine_gpus) == 8  # no two engines share a GPU
        # What the shares add up to on every GPU: one policy rank (0.5) and one engine worker (0.5).
        assert {s.num_gpus for s in plan.shape.policy} == {0.5}
        assert {e.worker_gpus for e in plan.shape.engine_slots} == {0.5}
    finally:
        _cleanup(plan, actors)


def test_colocated_tp1_engines_share_one_gpu_each_with_their_policy_rank(two_nodes, repo_root):
    # The GPU recipes' default shape: one TP1 engine per GPU, in the policy rank's bundle.
    plan, places, actors = _start(repo_root, ["generation.colocated=true", "generation.num_engines=8",
                                              "generation.tensor_parallel=1"])
    try:
        assert plan.policy_world_size == 8
        _check_policy(plan, places)
        for e, engine in enumerate(places["engines"]):
            assert len(engine["gpu_ids"]) == 1 and engine["device_index"] == 0, e
            assert _gpu(engine) == _gpu(places["policy"][e]), e  # engine e on policy rank e's GPU
        assert not any(places["engine_workers"])  # TP1: vLLM runs inside the engine actor
        assert {s.num_gpus for s in plan.shape.policy} == {0.5}
        assert {e.num_gpus for e in plan.shape.engine_slots} == {0.5}
    finally:
        _cleanup(plan, actors)


def test_separate_two_nodes_engines_on_their_own_gpus(two_nodes, repo_root):
    # 4 TP1 engines: two per node on each node's last two GPUs; the policy keeps 2 GPUs per node.
    plan, places, actors = _start(repo_root, ["generation.colocated=false", "generation.num_engines=4"])
    try:
        assert plan.policy_world_size == 4
        _check_policy(plan, places)
        assert [p["node_ip"] for p in places["policy"]] == [NODES[0], NODES[0], NODES[1], NODES[1]]
        engine_gpus = []
        for e, engine in enumerate(places["engines"]):
            assert engine["node_ip"] == NODES[e // 2]
            assert len(engine["gpu_ids"]) == 1 and engine["device_index"] == 0
            engine_gpus.append(_gpu(engine))
        assert len(set(engine_gpus)) == 4  # no two engines share a GPU
        assert not set(engine_gpus) & {_gpu(p) for p in places["policy"]}  # nor one with the policy
        for node in NODES:  # every declared GPU of both nodes is used exactly once
            used = sorted(g for n, g in engine_gpus + [_gpu(p) for p in places["policy"]] if n == node)
            assert used == ["0", "1", "2", "3"]
    finally:
        _cleanup(plan, actors)


def test_dead_actor_on_second_node_names_worker_node_and_step(two_nodes, repo_root):
    recipe = load_recipe(repo_root / RECIPE, [*TWO_BY_FOUR, "generation.colocated=false", "generation.num_engines=2"])
    plan = placement_for(recipe, timeout_s=60)
    try:
        healthy = Probe.options(**plan.engine_options(0), name="engine-0").remote()
        dying = Probe.options(**plan.engine_options(1), name="engine-1").remote()
        assert ray.get(dying.where.remote())["node_ip"] == NODES[1]
        started = time.monotonic()
        with pytest.raises(WorkerFailure) as caught:
            get_all([("engine-0", healthy.where.remote()), ("engine-1", dying.crash.remote())], step=4)
        failure = caught.value
        print(failure)
        assert (failure.worker, failure.node, failure.step, failure.kind) == ("engine-1", NODES[1], 4, "died")
        assert str(failure).startswith(f"worker engine-1 on node {NODES[1]} died during step 4: ")
        assert time.monotonic() - started < 60
        ray.kill(healthy)
    finally:
        plan.remove()
