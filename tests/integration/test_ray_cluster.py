"""Real Ray: a local cluster under the run directory, placement groups, joining via
RAY_ADDRESS, and worker deaths reported as WorkerFailure. One cluster for the module."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")

from gdpo_megatron.config.cluster import ClusterConfig  # noqa: E402
from gdpo_megatron.config.generation import GenerationConfig  # noqa: E402
from gdpo_megatron.config.policy import ParallelConfig  # noqa: E402
from gdpo_megatron.orchestration.cluster import (  # noqa: E402
    MAX_TEMP_DIR_CHARS,
    ClusterError,
    RayCluster,
    create_placement_group,
    placement_for,
)
from gdpo_megatron.orchestration.failures import WorkerFailure, get_all, worker_failures  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if ray.is_initialized():
        pytest.skip("another test module left a Ray connection open in this process; "
                    "these tests need to start their own local cluster")
    base = tmp_path_factory.mktemp("ray")
    # Deep enough that Ray's socket paths would break the AF_UNIX limit without the symlink.
    run_dir = base / ("a-long-run-directory-name-" * 3) / "gdpo-tiny-compare-grpo-vs-gdpo"
    home = base / "home"
    home.mkdir()
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ["HOME"] = str(home)
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):
        os.environ.pop(key, None)
    handle = RayCluster(run_dir / "ray", num_cpus=4, log_to_driver=False)
    try:
        with handle:
            yield SimpleNamespace(handle=handle, run_dir=run_dir, home=home)
        assert not ray.is_initialized()
        assert not handle.temp_dir.is_symlink()  # the short /tmp link is removed with the cluster
        assert "RAY_AUTH_TOKEN" not in os.environ  # the per-run token does not leak past the run
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_local_cluster_files_live_under_the_run_dir(cluster):
    handle = cluster.handle
    assert handle.started_locally
    assert len(str(cluster.run_dir / "ray")) > MAX_TEMP_DIR_CHARS
    assert handle.temp_dir is not None and len(str(handle.temp_dir)) <= MAX_TEMP_DIR_CHARS
    assert handle.temp_dir.resolve() == (cluster.run_dir / "ray").resolve()
    sessions = list((cluster.run_dir / "ray").glob("session_*/sockets"))
    assert sessions, "Ray's session directory is not under the run directory"
    assert not (cluster.home / ".ray").exists()
    assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) == 64
    assert ray.cluster_resources()["CPU"] == 4


def test_placement_group_with_cpu_bundles_places_each_worker(cluster):
    recipe = SimpleNamespace(name="shape", cluster=ClusterConfig(nodes=1, gpus_per_node=0, cpu_workers=2),
                             generation=GenerationConfig(num_engines=1, colocated=False),
                             policy=SimpleNamespace(parallel=ParallelConfig()))
    plan = placement_for(recipe, timeout_s=30)
    try:
        table = ray.util.placement_group_table(plan.group)
        assert table["state"] == "CREATED"
        node = ray.util.get_node_ip_address()
        assert plan.node_addresses == [node]
        # Every bundle is pinned to its node by a sliver of Ray's per-node resource.
        assert list(table["bundles"].values()) == [{"CPU": 1.0, f"node:{node}": 0.001}] * 4

        @ray.remote
        class Where:
            def where(self):
                context = ray.get_runtime_context()
                return context.get_placement_group_id(), context.get_assigned_resources()

        options = [plan.policy_options(0), plan.policy_options(1), plan.engine_options(0), plan.reward_options()]
        actors = [Where.options(**o).remote() for o in options]
        placed = ray.get([a.where.remote() for a in actors])
        assert all(group_id == plan.group.id.hex() for group_id, _ in placed)
        assert [resources.get("CPU") for _, resources in placed] == [1.0] * 4
        assert [o["scheduling_strategy"].placement_group_bundle_index for o in options] == [0, 1, 2, 3]
        for actor in actors:
            ray.kill(actor)
    finally:
        plan.remove()


def test_infeasible_placement_names_need_and_have(cluster):
    with pytest.raises(ClusterError, match=r"needs \{'CPU': 64.0\} but the Ray cluster has \{'CPU': 4.0\}"):
        create_placement_group([{"CPU": 32.0}, {"CPU": 32.0}], name="too-big", timeout_s=1)


@ray.remote(num_cpus=0)
class _Rank:
    def crash(self):
        os._exit(1)

    def hang(self, seconds):
        time.sleep(seconds)
        return "late"

    def fail(self):
        raise ValueError("loss is a string")

    def misconfigured(self):
        from gdpo_megatron.config.errors import ConfigError

        raise ConfigError("algorithm.rewards[0].function: unknown reward function 'nope'")

    def ok(self):
        return os.getpid()


def test_dead_worker_is_named_with_step_and_resume_hint(cluster):
    healthy = _Rank.options(name="policy-rank0").remote()
    dying = _Rank.options(name="policy-rank1").remote()
    ray.get([healthy.ok.remote(), dying.ok.remote()])
    started = time.monotonic()
    with pytest.raises(WorkerFailure) as caught:
        # rank0 would block 60 s (a peer stuck in a collective); the failure must not wait for it.
        get_all([("policy-rank0", healthy.hang.remote(60)), ("policy-rank1", dying.crash.remote())], step=7)
    assert time.monotonic() - started < 30
    failure = caught.value
    node = ray.util.get_node_ip_address()
    assert (failure.worker, failure.node, failure.step, failure.kind) == ("policy-rank1", node, 7, "died")
    text = str(failure)
    print(text)  # shown with -s: what a user reads
    assert text.startswith(f"worker policy-rank1 on node {node} died during step 7: ")
    assert "Rerun the same command to resume from the last complete checkpoint" in text

    # A call to the now-dead actor through plain ray.get inside the context manager:
    # the name comes from Ray's own death report.
    step = 9
    with pytest.raises(WorkerFailure, match=rf"^worker policy-rank1 on node {node} died during step 9: ") as again:
        with worker_failures(lambda: step, checkpoint_hint="checkpoints/step-8"):
            ray.get(dying.ok.remote())
    assert "resume from checkpoints/step-8" in str(again.value)
    assert isinstance(again.value.__cause__, ray.exceptions.RayActorError)
    ray.kill(healthy)


def test_exception_inside_worker_and_other_errors(cluster):
    worker = _Rank.options(name="rewards").remote()
    node = ray.util.get_node_ip_address()
    with pytest.raises(WorkerFailure, match=rf"^worker rewards on node {node} failed during step 2: ValueError: loss is "
                                            r"a string \(in _Rank.fail, pid \d+\)"):
        with worker_failures(2):
            ray.get(worker.fail.remote())
    with pytest.raises(WorkerFailure) as transient:
        with worker_failures(2):
            ray.get(worker.fail.remote())
    assert transient.value.resumable and "Rerun the same command" in str(transient.value)
    with pytest.raises(WorkerFailure) as permanent:
        with worker_failures(2):
            ray.get(worker.misconfigured.remote())
    assert not permanent.value.resumable
    assert "ConfigError: algorithm.rewards[0].function" in str(permanent.value)
    assert "Rerun" not in str(permanent.value) and "fix its cause" in str(permanent.value)
    with pytest.raises(KeyError):  # not a worker failure: passes through untouched
        with worker_failures(2):
            raise KeyError("x")
    ray.kill(worker)


def test_join_existing_cluster_via_ray_address(cluster):
    address = ray.get_runtime_context().gcs_address
    script = textwrap.dedent(f"""
        import ray
        from gdpo_megatron.orchestration.cluster import RayCluster
        with RayCluster({str(cluster.run_dir / 'other')!r}, log_to_driver=False) as handle:
            print(handle.started_locally, int(ray.cluster_resources()["CPU"]))
        print(ray.is_initialized())
    """)
    env = {**os.environ, "RAY_ADDRESS": address}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "4", "False"]
    assert not (cluster.run_dir / "other").exists()  # a joined cluster keeps its own temp dir
    assert ray.cluster_resources()["CPU"] == 4  # and disconnecting did not stop it
