"""benchmarks/bench_refit.py measures every transport the host supports, and says why it leaves one out."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_refit.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_refit", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def transports(plans):
    return sorted(t for layout in plans for t in layout.transports)


def test_cpu_host_measures_object_store_and_gloo_collective(bench):
    plans, left_out = bench.layouts(0)
    assert [(p.name, p.gpus_per_actor) for p in plans] == [("cpu", 0)]
    assert transports(plans) == ["collective", "object_store"]
    assert list(left_out) == ["cuda_ipc"] and "no GPU" in left_out["cuda_ipc"]


def test_one_gpu_shares_it_for_ipc_and_says_why_nccl_is_left_out(bench):
    plans, left_out = bench.layouts(1)
    assert [(p.name, p.gpus_per_actor) for p in plans] == [("colocated", 0.5)]
    assert transports(plans) == ["cuda_ipc", "object_store"]
    assert list(left_out) == ["collective"] and "2 GPUs" in left_out["collective"] and "has 1" in left_out["collective"]


def test_two_gpus_measure_all_three_transports(bench):
    from gdpo_megatron.orchestration.refit import REFITTERS

    plans, left_out = bench.layouts(2)
    assert [(p.name, p.gpus_per_actor) for p in plans] == [("colocated", 0.5), ("separate", 1)]
    assert transports(plans) == sorted(REFITTERS) and left_out == {}


def test_gpu_actors_ask_ray_for_their_gpu(bench):
    colocated, separate = bench.layouts(2)[0]
    assert bench.actor_options(colocated, None) == {"num_cpus": 0, "num_gpus": 0.5}
    assert bench.actor_options(separate, None) == {"num_cpus": 0, "num_gpus": 1}
    assert bench.actor_options(bench.layouts(0)[0][0], None) == {"num_cpus": 0}
