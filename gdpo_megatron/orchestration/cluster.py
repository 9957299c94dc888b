"""Ray for one run: start a local cluster or join an existing one, and place the workers.

- `RayCluster(run_dir.ray)`: a context manager. With `RAY_ADDRESS` set (the Slurm
  launcher starts Ray on the allocation and exports it) the driver joins that cluster;
  otherwise it starts a private local one whose temp/session files live under the run
  directory, never in $HOME or /tmp/ray.
- `placement_for(recipe)`: the plan of `placement.placement_shape(recipe)` reserved as one
  placement group whose bundles are pinned to Ray nodes (node index i of the plan = the
  i-th Ray node: the head first, then by address). The returned plan hands out the actor
  `.options(...)` of each worker and the node address each one runs on.
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

from .placement import PlacementError, PlacementShape, placement_shape  # noqa: F401  (re-exported)

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
    """A TCP port free on `host` now (the torch.distributed rendezvous asks rank 0's node for one)."""
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


# Ray's switch for what a zero-GPU actor's CUDA_VISIBLE_DEVICES becomes ("0": left as the node has it).
ZERO_GPU_OVERRIDE = "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"

# A bundle asks for this much of Ray's per-node resource `node:<address>`, which pins it to
# that node without using up anything real.
NODE_PIN = 0.001


def ray_node_addresses(count: int, gpus_per_node: int = 0) -> list[str]:
    """Addresses of the Ray nodes that play node 0..count-1 of the plan: the head first, then by address.

    Only alive nodes with at least `gpus_per_node` GPUs count; two Ray nodes with one
    address cannot be told apart by `node:<address>`, so that is refused.
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    usable = [n for n in alive if n.get("Resources", {}).get("GPU", 0) >= gpus_per_node]
    usable.sort(key=lambda n: ("node:__internal_head__" not in n.get("Resources", {}), n["NodeManagerAddress"]))
    addresses = [n["NodeManagerAddress"] for n in usable]
    if len(addresses) < count:
        seen = ", ".join(f"{n['NodeManagerAddress']} ({n.get('Resources', {}).get('GPU', 0):g} GPUs)" for n in alive)
        raise ClusterError(
            f"cluster.nodes is {count} (x {gpus_per_node} GPUs) but the Ray cluster has {len(addresses)} such "
            f"node(s): {seen or 'none'}; check the allocation or the recipe's cluster section")
    chosen = addresses[:count]
    if len(set(chosen)) != len(chosen):
        raise ClusterError(f"Ray nodes {chosen} share an address; each node of a run needs its own")
    return chosen


@dataclass
class PlacementPlan:
    """The plan bound to Ray: a ready placement group, the node addresses, and every actor's options."""

    shape: PlacementShape
    group: Any = field(repr=False)
    node_addresses: list[str] = field(default_factory=list)

    @property
    def policy_world_size(self) -> int:
        return self.shape.policy_world_size

    @property
    def num_engines(self) -> int:
        return self.shape.engines

    def _options(self, bundle: int, num_cpus: float, num_gpus: float) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=bundle,
            # vLLM's Ray executor (tensor_parallel > 1) starts its workers from the engine
            # actor; capturing the group keeps them inside this run's reservation.
            placement_group_capture_child_tasks=True)
        return {"num_cpus": num_cpus, "num_gpus": num_gpus, "scheduling_strategy": strategy}

    def policy_options(self, rank: int) -> dict[str, Any]:
        if not 0 <= rank < self.policy_world_size:
            raise IndexError(f"policy rank {rank} outside world size {self.policy_world_size}")
        slot = self.shape.policy[rank]
        return self._options(slot.bundle, 1.0, slot.num_gpus)

    def engine_options(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.shape.engines:
            raise IndexError(f"engine {index} outside num_engines {self.shape.engines}")
        slot = self.shape.engine_slots[index]
        options = self._options(slot.bundles[0], 1.0, slot.num_gpus)
        if slot.worker_gpus:
            # This actor holds no GPU (vLLM's Ray workers do) but drives a GPU engine, so it must
            # see its node's GPUs; older Ray releases blank CUDA_VISIBLE_DEVICES for zero-GPU
            # actors unless told not to.
            options["runtime_env"] = {"env_vars": {ZERO_GPU_OVERRIDE: "0"}}
        return options

    def engine_env(self, index: int) -> dict[str, str]:
        return self.shape.engine_slots[index].vllm_env()

    def reward_options(self) -> dict[str, Any]:
        return self._options(self.shape.reward_bundle, 1.0, 0.0)

    def node_of_policy(self, rank: int) -> str:
        return self.node_addresses[self.shape.policy[rank].node] if self.node_addresses else ""

    def node_of_engine(self, index: int) -> str:
        return self.node_addresses[self.shape.engine_slots[index].node] if self.node_addresses else ""

    def remove(self) -> None:
        from ray.util import remove_placement_group

        remove_placement_group(self.group)


def pinned_bundles(shape: PlacementShape, node_addresses: list[str]) -> list[dict[str, float]]:
    """The shape's bundles, each also asking for its node's `node:<address>` resource."""
    out = []
    for bundle in shape.bundle_list:
        resources = bundle.resources()
        resources[f"node:{node_addresses[bundle.node]}"] = NODE_PIN
        out.append(resources)
    return out


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
    """Reserve the run's resources (Ray must be initialized): the shape's bundles, each on its node."""
    shape = placement_shape(recipe)
    addresses = ray_node_addresses(shape.nodes, recipe.cluster.gpus_per_node)
    group = create_placement_group(pinned_bundles(shape, addresses), name=f"gdpo-{getattr(recipe, 'name', 'run')}",
                                   strategy="PACK", timeout_s=timeout_s)
    return PlacementPlan(shape, group, addresses)
