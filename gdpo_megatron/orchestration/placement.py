"""Where every worker of a run goes: one explicit plan, derived from the recipe only (pure, no Ray).

`placement_shape(recipe)` maps `cluster`, `generation` and `policy.parallel` to a list of
bundles, each pinned to a node index and (on GPU hosts) a GPU slot of that node, and says
which bundle(s) every policy rank, every engine and the reward worker use:

- Policy ranks fill nodes in rank order, so consecutive ranks (a tensor-parallel group)
  share a node.
- Colocated engines (`generation.colocated: true`): engine `e` with tensor_parallel `T`
  shares the GPUs of policy ranks `e*T .. e*T+T-1` (fractional GPU resources: 0.5 each),
  so `T` must divide `gpus_per_node` and an engine never spans nodes.
- Separate engines: each node keeps `engines // nodes` engines (the first nodes take the
  remainder) on its last GPUs, the policy takes the rest; an engine's `T` GPUs are on one node.
- CPU hosts (`gpus_per_node: 0`): `cpu_workers` policy slots per node; a separate engine gets
  its own CPU slot on its node, a colocated one shares its policy rank's slot.
- An engine with `T = 1` is one Ray actor holding its GPU share; with `T > 1` the engine
  actor holds no GPU and vLLM's Ray executor starts one worker in each of the engine's
  bundles (`VLLM_RAY_BUNDLE_INDICES`), never in a bundle of the policy or another engine.
- The reward worker takes one CPU slot on node 0.

`gdpo plan` prints this plan (`format_placement`) and the trainer reserves exactly it
(`cluster.placement_for`), binding node index `i` to the i-th Ray node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.parallel_layout import world_problems

# A colocated policy rank and engine split their GPU evenly; vLLM's own memory limit is
# `generation.gpu_memory_utilization`, the Ray share only decides who may sit on the GPU.
COLOCATED_GPU_SHARE = 0.5


class PlacementError(ConfigError):
    """The recipe's cluster cannot host its workers as configured."""


@dataclass(frozen=True)
class Bundle:
    """One Ray placement-group bundle, pinned to a node (and a GPU slot of it on GPU hosts)."""

    node: int
    gpu: Optional[int]
    cpus: float
    gpus: float

    def resources(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus} if self.gpus else {"CPU": self.cpus}


@dataclass(frozen=True)
class PolicySlot:
    rank: int
    bundle: int
    node: int
    gpu: Optional[int]
    num_gpus: float          # the actor's GPU share (0 on CPU hosts)


@dataclass(frozen=True)
class EngineSlot:
    index: int
    bundles: tuple[int, ...]       # one per tensor-parallel rank; the actor sits in bundles[0]
    node: int
    gpus: tuple[Optional[int], ...]
    num_gpus: float                # the engine actor's GPU share (0 when vLLM's workers hold the GPUs)
    worker_gpus: float             # GPU share of each vLLM Ray worker (tensor_parallel > 1), else 0

    @property
    def tensor_parallel(self) -> int:
        return len(self.bundles)

    def vllm_env(self) -> dict[str, str]:
        """What vLLM's Ray executor needs to put its workers into exactly this engine's bundles."""
        if self.tensor_parallel == 1:
            return {}
        return {"VLLM_RAY_BUNDLE_INDICES": ",".join(str(b) for b in self.bundles),
                "VLLM_RAY_PER_WORKER_GPUS": str(self.worker_gpus)}


@dataclass(frozen=True)
class PlacementShape:
    """The whole plan: bundles (node-major), and the slot of every worker in them."""

    use_gpus: bool
    nodes: int
    devices_per_node: int       # GPUs per node, or policy CPU slots per node on CPU hosts
    colocated: bool
    bundle_list: tuple[Bundle, ...]
    policy: tuple[PolicySlot, ...]
    engine_slots: tuple[EngineSlot, ...]
    reward_bundle: int

    @property
    def policy_world_size(self) -> int:
        return len(self.policy)

    @property
    def engines(self) -> int:
        return len(self.engine_slots)

    @property
    def bundles(self) -> list[dict[str, float]]:
        return [b.resources() for b in self.bundle_list]

    @property
    def engine_bundles(self) -> int:
        """Bundles that hold only engines (0 when every engine shares a policy rank's slot)."""
        policy = {slot.bundle for slot in self.policy}
        return len({b for e in self.engine_slots for b in e.bundles} - policy)

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes, "use_gpus": self.use_gpus, "colocated": self.colocated,
            "policy": [{"rank": s.rank, "node": s.node, "gpu": s.gpu, "bundle": s.bundle, "num_gpus": s.num_gpus}
                       for s in self.policy],
            "engines": [{"index": e.index, "node": e.node, "gpus": list(e.gpus), "bundles": list(e.bundles),
                         "num_gpus": e.num_gpus, "worker_gpus": e.worker_gpus} for e in self.engine_slots],
            "rewards": {"node": self.bundle_list[self.reward_bundle].node, "bundle": self.reward_bundle},
            "bundles": [{"node": b.node, "gpu": b.gpu, **b.resources()} for b in self.bundle_list],
        }


def _engines_per_node(engines: int, nodes: int) -> list[int]:
    base, extra = divmod(engines, nodes)
    return [base + (1 if n < extra else 0) for n in range(nodes)]


def placement_shape(recipe: Any) -> PlacementShape:
    """The plan for `recipe` (see module doc); PlacementError names the keys when it cannot fit."""
    cluster, generation, parallel = recipe.cluster, recipe.generation, recipe.policy.parallel
    use_gpus = cluster.gpus_per_node > 0
    nodes = cluster.nodes
    per_node = cluster.gpus_per_node if use_gpus else cluster.cpu_workers
    tp, engines, colocated = generation.tensor_parallel, generation.num_engines, generation.colocated
    if not use_gpus and tp != 1:
        raise PlacementError("generation.tensor_parallel: a CPU vLLM engine runs in one process; set it to 1")
    if use_gpus and tp > per_node:
        raise PlacementError(f"generation.tensor_parallel: {tp} GPUs per engine exceed cluster.gpus_per_node "
                             f"{per_node}; an engine's GPUs must be on one node")

    # (node, gpu slot) of every policy rank and of every engine's tensor-parallel ranks.
    policy_devices: list[tuple[int, int]] = []
    engine_devices: list[list[tuple[int, int]]] = []
    if colocated:
        total = nodes * per_node
        if engines * tp > total:
            where = "GPUs" if use_gpus else "policy workers (cluster.nodes x cpu_workers)"
            raise PlacementError(f"generation: {engines} colocated engines x tensor_parallel {tp} need {engines * tp} "
                                 f"{where}, the cluster has {total}; lower generation.num_engines or set "
                                 "generation.colocated=false")
        if per_node % tp:
            raise PlacementError(f"generation.tensor_parallel: {tp} does not divide cluster.gpus_per_node {per_node}; "
                                 "a colocated engine would span two nodes")
        policy_devices = [divmod(d, per_node) for d in range(total)]
        engine_devices = [[divmod(d, per_node) for d in range(e * tp, e * tp + tp)] for e in range(engines)]
    else:
        counts = _engines_per_node(engines, nodes)
        engine_index = 0
        for node, here in enumerate(counts):
            engine_gpus = here * tp if use_gpus else 0
            policy_here = per_node - engine_gpus
            if use_gpus and policy_here < 0:
                raise PlacementError(
                    f"generation: {here} engines x tensor_parallel {tp} on node {node} need {engine_gpus} GPUs, "
                    f"cluster.gpus_per_node is {per_node}; add nodes or lower generation.num_engines")
            policy_devices.extend((node, slot) for slot in range(policy_here))
            for k in range(here):
                first = policy_here + k * tp if use_gpus else per_node + k
                engine_devices.append([(node, first + t) for t in range(tp)])
                engine_index += 1
        if not policy_devices:
            raise PlacementError(
                f"generation: {engines} engines x tensor_parallel {tp} use all {nodes * per_node} GPUs of cluster "
                f"({nodes} nodes x {per_node}); leave GPUs for the policy or set generation.colocated=true")
    world = len(policy_devices)
    for problem in world_problems(parallel, world, "policy worker count"):
        raise PlacementError(
            f"{problem.key}: {problem.message}; the policy workers are cluster.nodes x "
            f"{'gpus_per_node' if use_gpus else 'cpu_workers'}{' minus engine GPUs' if use_gpus and not colocated else ''}")

    # Bundles, node-major: the node's policy devices, then its engine-only devices.
    engine_at = {dev: e for e, devs in enumerate(engine_devices) for dev in devs}
    order = sorted(set(policy_devices) | set(engine_at), key=lambda d: d)
    index = {dev: i for i, dev in enumerate(order)}
    policy_set = set(policy_devices)
    bundles = []
    for dev in order:
        node, slot = dev
        shared = dev in policy_set and dev in engine_at
        bundles.append(Bundle(node=node, gpu=slot if use_gpus else None, cpus=2.0 if shared else 1.0,
                              gpus=1.0 if use_gpus else 0.0))
    bundles.append(Bundle(node=0, gpu=None, cpus=1.0, gpus=0.0))
    reward_bundle = len(bundles) - 1

    def share(dev) -> float:
        if not use_gpus:
            return 0.0
        return COLOCATED_GPU_SHARE if (dev in policy_set and dev in engine_at) else 1.0

    policy = tuple(PolicySlot(rank=r, bundle=index[dev], node=dev[0], gpu=dev[1] if use_gpus else None,
                              num_gpus=share(dev)) for r, dev in enumerate(policy_devices))
    engine_slots = tuple(
        EngineSlot(index=e, bundles=tuple(index[d] for d in devs), node=devs[0][0],
                   gpus=tuple(d[1] if use_gpus else None for d in devs),
                   num_gpus=share(devs[0]) if tp == 1 else 0.0,
                   worker_gpus=share(devs[0]) if tp > 1 else 0.0)
        for e, devs in enumerate(engine_devices))
    return PlacementShape(use_gpus=use_gpus, nodes=nodes, devices_per_node=per_node, colocated=colocated,
                          bundle_list=tuple(bundles), policy=policy, engine_slots=engine_slots,
                          reward_bundle=reward_bundle)


def format_placement(shape: PlacementShape) -> str:
    """One line per device: which workers sit on it (what `gdpo plan` prints)."""
    kind = "GPU" if shape.use_gpus else "CPU slot"
    mode = "colocated (engines share their policy ranks' devices and sleep while the policy trains)" \
        if shape.colocated else "separate (engines on their own devices)"
    lines = [f"placement: {shape.nodes} node(s) x {shape.devices_per_node} "
             f"{'GPUs' if shape.use_gpus else 'policy CPU slots'}, engines {mode}"]
    users: dict[int, list[str]] = {i: [] for i in range(len(shape.bundle_list))}
    for slot in shape.policy:
        users[slot.bundle].append(f"policy-rank{slot.rank}")
    for engine in shape.engine_slots:
        for t, bundle in enumerate(engine.bundles):
            users[bundle].append(f"engine-{engine.index}" + (f"/tp{t}" if engine.tensor_parallel > 1 else ""))
    users[shape.reward_bundle].append("rewards")
    for i, bundle in enumerate(shape.bundle_list):
        where = f"{kind} {bundle.gpu}" if bundle.gpu is not None else ("CPU" if i == shape.reward_bundle else kind)
        lines.append(f"  node {bundle.node}  {where:<9} {', '.join(users[i])}")
    return "\n".join(lines)
