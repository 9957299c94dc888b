"""Ray for one run: start a local cluster or join an existing one, and place the workers.

- `RayCluster(run_dir.ray)`: a context manager. With `RAY_ADDRESS` set (the Slurm
  launcher starts Ray on the allocation and exports it) the driver joins that cluster;
  otherwise it starts a private local one whose temp/session files live under the run
  directory, never in $HOME or /tmp/ray.
- `placement_for(recipe)`: one placement group shaped by the recipe's `cluster` section,
  with a bundle per policy worker (a GPU on GPU hosts, a CPU slot on CPU hosts), bundles
  for generation engines that are not colocated, and one for the reward worker. The
  returned plan hands out the actor `.options(...)` of each worker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdpo_megatron.parallel_layout import world_problems

logger = logging.getLogger(__name__)

# Ray puts Unix sockets at <temp>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store;
# that suffix is ~62 bytes and AF_UNIX paths are limited to 107 bytes on Linux (103 on
# macOS), so a temp dir longer than this is reached through a short symlink in /tmp.
MAX_TEMP_DIR_CHARS = 35
# A CPU host runs policy ranks, engines and reward workers that take turns (the loop's
# phases alternate), so logical CPU slots may exceed the cores; never fewer than this.
LOCAL_MIN_LOGICAL_CPUS = 8
PLACEMENT_TIMEOUT_S = 120.0


class ClusterError(RuntimeError):
    """Ray could not be started/joined or cannot fit the recipe's workers."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now (for the torch.distributed rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def short_temp_dir(temp_root: Path) -> tuple[Path, Path | None]:
    """(path to give Ray, symlink created for it or None) for a temp dir under the run dir."""
    temp_root = Path(temp_root).resolve()
    temp_root.mkdir(parents=True, exist_ok=True)
    if len(str(temp_root).encode()) <= MAX_TEMP_DIR_CHARS:
        return temp_root, None
    digest = hashlib.sha1(str(temp_root).encode()).hexdigest()[:10]
    link = Path("/tmp") / f"gdpo-ray-{digest}"
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == temp_root:
            return link, link
        link.unlink()
    link.symlink_to(temp_root, target_is_directory=True)
    return link, link


class RayCluster:
    """Start (or join) Ray on enter, shut it down (or disconnect) on exit."""

    def __init__(self, temp_root: str | Path, *, address: str | None = None, num_cpus: int | None = None,
                 num_gpus: int | None = None, log_to_driver: bool = True) -> None:
        self.temp_root = Path(temp_root)
        self.address = address if address is not None else os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.log_to_driver = log_to_driver
        self.started_locally = False
        self.temp_dir: Path | None = None
        self._symlink: Path | None = None
        self._owns_connection = False
        self._saved_env: dict[str, str | None] = {}

    def __enter__(self) -> "RayCluster":
        try:
            self.start()
        except BaseException:
            # __exit__ does not run when __enter__ fails: undo the symlink and env here.
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def _set_env(self, name: str, value: str) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def start(self) -> None:
        import ray

        if ray.is_initialized():
            # Someone (a test, a notebook) already connected this process; use it as is.
            logger.info("using the Ray connection that already exists in this process")
            return
        if "RAY_USAGE_STATS_ENABLED" not in os.environ:
            self._set_env("RAY_USAGE_STATS_ENABLED", "0")
        if self.address:
            try:
                ray.init(address=self.address, log_to_driver=self.log_to_driver)
            except Exception as exc:  # noqa: BLE001 - any failure to connect gets the same advice
                raise ClusterError(
                    f"cannot join the Ray cluster at RAY_ADDRESS={self.address!r}: {exc}. Check that `ray start "
                    "--head` ran on the head node and that this node can reach it; unset RAY_ADDRESS to start a "
                    "local cluster instead") from exc
            self._owns_connection = True
            return
        self.temp_dir, self._symlink = short_temp_dir(self.temp_root)
        if "RAY_AUTH_MODE" not in os.environ:
            # Ray >= 2.5x enables token auth for new local clusters and stores the token in
            # ~/.ray/auth_token. A per-run token passed through the environment keeps the
            # protection and writes nothing to $HOME; child processes inherit it.
            self._set_env("RAY_AUTH_MODE", "token")
            self._set_env("RAY_AUTH_TOKEN", secrets.token_hex(32))
            _refresh_ray_auth_settings()
        cpus = self.num_cpus if self.num_cpus is not None else max(os.cpu_count() or 1, LOCAL_MIN_LOGICAL_CPUS)
        self._owns_connection = True  # from here on, shutdown() must clean up even if init fails
        ray.init(num_cpus=cpus, num_gpus=self.num_gpus, include_dashboard=False,
                 _temp_dir=str(self.temp_dir), log_to_driver=self.log_to_driver)
        self.started_locally = True

    def shutdown(self) -> None:
        import ray

        if self._owns_connection and ray.is_initialized():
            # For a joined cluster this only disconnects the driver; the cluster lives on.
            ray.shutdown()
        self._owns_connection = False
        if self._symlink is not None:
            self._symlink.unlink(missing_ok=True)
            self._symlink = None
        auth_changed = any(name.startswith("RAY_AUTH") for name in self._saved_env)
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}
        if auth_changed:
            _refresh_ray_auth_settings()


def _refresh_ray_auth_settings() -> None:
    """Make an already imported Ray re-read RAY_AUTH_MODE / RAY_AUTH_TOKEN.

    Ray caches both in its C++ layer the first time they are read, so environment
    changes after `import ray` are otherwise ignored (the driver would then be refused by
    the cluster it just started). These hooks are what Ray itself calls when it switches
    a local cluster to token auth; if a future Ray drops them, set the two variables
    before Ray is imported instead.
    """
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@dataclass(frozen=True)
class PlacementShape:
    """Bundles of one run, derived from the recipe only (pure; testable without Ray)."""

    use_gpus: bool
    policy_world_size: int
    engine_bundles: int      # 0 when engines are colocated with the policy
    engines: int
    engine_tensor_parallel: int
    colocated: bool
    nodes: int

    @property
    def bundles(self) -> list[dict[str, float]]:
        device = {"CPU": 1.0, "GPU": 1.0} if self.use_gpus else {"CPU": 1.0}
        if self.use_gpus and self.colocated:
            # The policy rank and a colocated engine share the bundle's GPU and need a CPU each.
            device = {"CPU": 2.0, "GPU": 1.0}
        policy = [dict(device) for _ in range(self.policy_world_size)]
        engines = [dict(device) for _ in range(self.engine_bundles)]
        rewards = [{"CPU": 1.0}]
        return policy + engines + rewards

    @property
    def reward_bundle(self) -> int:
        return self.policy_world_size + self.engine_bundles


def placement_shape(recipe: Any) -> PlacementShape:
    """Map `cluster`, `generation` and `policy.parallel` to bundle counts, with clear errors."""
    cluster, generation, parallel = recipe.cluster, recipe.generation, recipe.policy.parallel
    use_gpus = cluster.gpus_per_node > 0
    devices = cluster.nodes * (cluster.gpus_per_node if use_gpus else cluster.cpu_workers)
    engine_devices = generation.num_engines * generation.tensor_parallel
    colocated = generation.colocated or not use_gpus
    if colocated:
        # On CPU hosts engines always take their own slot; "colocated" is about GPUs.
        world, engine_bundles = devices, (0 if use_gpus else generation.num_engines)
    else:
        world, engine_bundles = devices - engine_devices, engine_devices
        if world < 1:
            raise ClusterError(
                f"generation: {generation.num_engines} engines x tensor_parallel {generation.tensor_parallel} "
                f"use all {devices} GPUs of cluster ({cluster.nodes} nodes x {cluster.gpus_per_node}); "
                "leave GPUs for the policy or set generation.colocated=true")
    for problem in world_problems(parallel, world, "policy worker count"):
        raise ClusterError(
            f"{problem.key}: {problem.message}; the policy workers are cluster.nodes x "
            f"{'gpus_per_node' if use_gpus else 'cpu_workers'}{'' if colocated else ' minus engine GPUs'}")
    if use_gpus and colocated and engine_devices > world:
        raise ClusterError(
            f"generation: colocated engines need {engine_devices} GPUs, the policy has {world}")
    return PlacementShape(use_gpus=use_gpus, policy_world_size=world, engine_bundles=engine_bundles,
                          engines=generation.num_engines, engine_tensor_parallel=generation.tensor_parallel,
                          colocated=colocated, nodes=cluster.nodes)


@dataclass
class PlacementPlan:
    """A ready placement group and the actor options of every worker in it."""

    shape: PlacementShape
    group: Any = field(repr=False)

    @property
    def policy_world_size(self) -> int:
        return self.shape.policy_world_size

    def _options(self, bundle: int, num_cpus: float, num_gpus: float) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=bundle,
            # Engines with tensor_parallel > 1 start their own Ray workers (vLLM's Ray
            # executor); capturing the group keeps them inside this run's reservation.
            placement_group_capture_child_tasks=True)
        return {"num_cpus": num_cpus, "num_gpus": num_gpus, "scheduling_strategy": strategy}

    def policy_options(self, rank: int) -> dict[str, Any]:
        if not 0 <= rank < self.policy_world_size:
            raise IndexError(f"policy rank {rank} outside world size {self.policy_world_size}")
        gpus = (0.5 if self.shape.colocated else 1.0) if self.shape.use_gpus else 0.0
        return self._options(rank, 1.0, gpus)

    def engine_options(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.shape.engines:
            raise IndexError(f"engine {index} outside num_engines {self.shape.engines}")
        if self.shape.use_gpus and self.shape.colocated:
            # Shares the GPU of the first policy rank of its tensor-parallel slice.
            return self._options(index * self.shape.engine_tensor_parallel, 1.0, 0.5)
        if self.shape.use_gpus:
            bundle = self.policy_world_size + index * self.shape.engine_tensor_parallel
            return self._options(bundle, 1.0, 1.0)
        return self._options(self.policy_world_size + index, 1.0, 0.0)

    def reward_options(self) -> dict[str, Any]:
        return self._options(self.shape.reward_bundle, 1.0, 0.0)

    def remove(self) -> None:
        from ray.util import remove_placement_group

        remove_placement_group(self.group)


def create_placement_group(bundles: list[dict[str, float]], *, name: str = "",
                           strategy: str = "PACK", timeout_s: float = PLACEMENT_TIMEOUT_S) -> Any:
    """A ready placement group, or a ClusterError that compares the need with what Ray has."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util import placement_group, remove_placement_group

    group = placement_group(bundles, strategy=strategy, name=name)
    try:
        ray.get(group.ready(), timeout=timeout_s)
    except GetTimeoutError:
        remove_placement_group(group)
        need: dict[str, float] = {}
        for bundle in bundles:
            for resource, amount in bundle.items():
                need[resource] = need.get(resource, 0.0) + amount
        have = {k: v for k, v in ray.cluster_resources().items() if k in need}
        raise ClusterError(
            f"placement group {name or '(unnamed)'} with {len(bundles)} bundles needs {need} but the Ray "
            f"cluster has {have} (waited {timeout_s:.0f}s); check the recipe's cluster section against the "
            "allocation") from None
    return group


def placement_for(recipe: Any, *, timeout_s: float = PLACEMENT_TIMEOUT_S) -> PlacementPlan:
    """Reserve the run's resources (Ray must be initialized) and return the worker options."""
    shape = placement_shape(recipe)
    # PACK fills nodes in order, so consecutive policy ranks (a TP group) share a node.
    group = create_placement_group(shape.bundles, name=f"gdpo-{getattr(recipe, 'name', 'run')}",
                                   strategy="PACK", timeout_s=timeout_s)
    return PlacementPlan(shape, group)
