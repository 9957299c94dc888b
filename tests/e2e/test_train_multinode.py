"""The trainer over two simulated nodes equals the single-node run; colocated engines sleep and wake in order.

Real everything that runs on CPU: Ray (two real Ray nodes on this host, each with its own
loopback address, joined through RAY_ADDRESS as on Slurm), megatron-core on gloo with
DP = 2 (one rank per node, rendezvous at rank 0's node address), two vLLM CPU engines
(one per node), the real reward worker.

The single-node reference run is colocated: engines share their policy ranks' CPU slots
and the trainer puts them to sleep for every training phase. The vLLM CPU build has no
sleep mode: `LLM.sleep` / `wake_up` run through vLLM (scheduler paused, prefix cache
dropped, the executor's sleeping tags kept) but its CPU worker frees no memory, so that
test checks the call order and vLLM's bookkeeping of what is asleep, not freed bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from helpers.ray_nodes import simulated_ray_nodes  # noqa: E402

pytestmark = pytest.mark.slow

RECIPE = "recipes/tiny/synthetic-gdpo-1n2c.yaml"
NODES = ("127.0.0.2", "127.0.0.3")
STEPS = 2
COMMON = ["trainer.prompts_per_step=8", "trainer.rollouts_per_prompt=4", "generation.sampling.max_new_tokens=24",
          f"trainer.max_steps={STEPS}", "trainer.checkpoint.every_steps=0", "generation.num_engines=2",
          "warmstart.enabled=false"]
TIMING_PREFIXES = ("time/", "throughput/", "memory/", "reward_time_s", "refit/seconds", "wall")


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(TIMING_PREFIXES)}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def colocated_single_node(tmp_path_factory, initial_model, repo_root):
    """The in-process trainer on one local node (2 policy ranks, 2 colocated engines), with its calls recorded."""
    if ray.is_initialized():
        pytest.skip("a Ray connection is already open in this process")
    from gdpo_megatron.config import load_recipe
    from gdpo_megatron.trainer import Trainer

    class RecordingTrainer(Trainer):
        """The real trainer; only notes, in order, what it asks of the engines and the policy."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.events = []

        def _engine_calls(self, method, *args):
            results = super()._engine_calls(method, *args)
            sleeping = [r.get("sleeping") for r in results] if method in ("sleep", "wake") else None
            self.events.append((method, args[0] if method in ("sleep", "wake") else None, sleeping))
            return results

        def _start_policy_ranks(self, plan, data):
            self.events.append(("policy_ranks_start", None, None))
            return super()._start_policy_ranks(plan, data)

        def _generate_rollouts(self, prompts, seed, n=None, step=None):
            self.events.append(("generate", None, None))
            return super()._generate_rollouts(prompts, seed, n, step)

        def _train(self, batch):
            self.events.append(("train", None, None))
            return super()._train(batch)

        def _refit(self):
            self.events.append(("refit", None, None))  # over whichever transport the recipe selects
            return super()._refit()

    run_dir = tmp_path_factory.mktemp("single") / "run"
    recipe = load_recipe(repo_root / RECIPE, [*COMMON, f"policy.model.hf_path={initial_model}", "cluster.nodes=1",
                                              "cluster.cpu_workers=2", "generation.colocated=true"])
    trainer = RecordingTrainer(recipe, run_dir, log=lambda _: None)
    assert trainer.run() == 0
    assert not ray.is_initialized()
    return trainer.events, run_dir


def test_colocated_sleep_wake_order_cpu_build_without_sleep_mode(colocated_single_node):
    events, run_dir = colocated_single_node
    asleep, awake_weights, awake = [["kv_cache", "weights"]] * 2, [["kv_cache"]] * 2, [[]] * 2
    start = [("sleep", 1, asleep),            # engines profiled and asleep before the policy ranks start
             ("policy_ranks_start", None, None),
             ("wake", ["weights"], awake_weights), ("refit", None, None), ("wake", ["kv_cache"], awake)]
    step = [("generate", None, None), ("sleep", 1, asleep), ("train", None, None),
            ("wake", ["weights"], awake_weights), ("refit", None, None), ("wake", ["kv_cache"], awake)]
    assert events == start + step * STEPS
    for record in read_metrics(run_dir):
        assert record["time/engine_sleep"] > 0 and record["time/engine_wake"] > 0
    placement = json.loads((run_dir / "placement.json").read_text())
    # Colocated: engine e shares policy rank e's slot (one bundle, CPU 2).
    assert [e["bundles"] for e in placement["plan"]["engines"]] == [[0], [1]]
    assert [p["bundle"] for p in placement["plan"]["policy"]] == [0, 1]


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """Two Ray nodes on this host (127.0.0.2 head, 127.0.0.3), no driver connected from this process."""
    with simulated_ray_nodes(tmp_path_factory.mktemp("ray"), NODES, num_cpus=4) as cluster:
        yield cluster.address


def test_two_node_run_equals_single_node_run(colocated_single_node, two_node_cluster, initial_model, repo_root,
                                             tmp_path):
    _, single_dir = colocated_single_node
    run_dir = tmp_path / "two-nodes"
    command = [sys.executable, "-m", "gdpo_megatron.cli", "train", RECIPE, *COMMON, f"trainer.run_dir={run_dir}",
               f"policy.model.hf_path={initial_model}", "cluster.nodes=2", "cluster.cpu_workers=1",
               "generation.colocated=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": two_node_cluster, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]

    placement = json.loads((run_dir / "placement.json").read_text())
    assert placement["node_addresses"] == list(NODES)
    assert [p["node_ip"] for p in placement["policy"]] == list(NODES)     # DP rank r on node r
    assert [e["node_ip"] for e in placement["engines"]] == list(NODES)    # engine e on node e
    assert placement["rendezvous"]["address"] == NODES[0]                # rank 0's node, not 127.0.0.1
    assert f"[placement] policy-rank1 on {NODES[1]}" in proc.stdout

    single, multi = read_metrics(single_dir), read_metrics(run_dir)
    assert [r["step"] for r in multi] == list(range(1, STEPS + 1))
    assert multi[0]["train/global_sequences"] == 32 and multi[0]["refit/bytes"] > 0
    differ = [(a["step"], key, a.get(key), b.get(key)) for a, b in zip(map(comparable, multi), map(comparable, single))
              for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    assert not differ, differ  # (step, key, two nodes, one node)
    assert len(multi) == len(single)
