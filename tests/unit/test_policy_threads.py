"""Torch threads of a CPU policy rank: the exported OMP_NUM_THREADS shared by the policy ranks of its node."""

import pytest

from gdpo_megatron.orchestration.policy_worker import cpu_threads


@pytest.mark.parametrize("omp,world,nodes,expected", [
    ("2", 1, 1, 2),    # the tiny recipes: one rank has both cores while the engine waits
    ("4", 2, 1, 2),    # two ranks on one node share them
    ("4", 4, 2, 2),    # two ranks per node
    ("2", 3, 1, 1),    # never below one thread
    ("8", 3, 1, 2),    # ranks per node rounds up (3 ranks on one node)
])
def test_threads_share_the_node(monkeypatch, omp, world, nodes, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert cpu_threads(world, nodes) == expected


def test_one_thread_without_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads(1, 1) == 1
