"""Ray nodes on this host that stand in for a cluster's machines, each on its own loopback
address (127.0.0.x), optionally declaring GPUs, so that placement and rendezvous code sees
several nodes as it would on Slurm:

    with simulated_ray_nodes(tmp_dir, ("127.0.0.2", "127.0.0.3"), num_cpus=4) as cluster:
        ...  # cluster.address; nothing is connected from this process
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from gdpo_megatron.orchestration.cluster import short_temp_dir


@contextlib.contextmanager
def simulated_ray_nodes(temp_root: Path, node_ips: tuple[str, ...], num_cpus: int,
                        num_gpus: int = 0, node_env: dict[str, str] | None = None) -> Iterator:
    """`node_env`: environment the nodes' processes start with (what a job launcher exports)."""
    from ray.cluster_utils import Cluster

    node_env = node_env or {}
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_TMPDIR", *node_env)}
    temp, link = short_temp_dir(temp_root)
    # Ray writes the cluster's address file under $RAY_TMPDIR/ray: keep it out of the shared /tmp/ray.
    (temp / "ray").mkdir()
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(temp), **node_env)
    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(initialize_head=True, head_node_args={
        "node_ip_address": node_ips[0], "num_cpus": num_cpus, "num_gpus": num_gpus, "include_dashboard": False,
        "temp_dir": str(temp / "ray")})
    for node_ip in node_ips[1:]:
        cluster.add_node(node_ip_address=node_ip, num_cpus=num_cpus, num_gpus=num_gpus)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        cluster.shutdown()
        if link is not None:
            link.unlink(missing_ok=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
