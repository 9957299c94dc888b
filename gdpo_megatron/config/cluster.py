"""The `cluster` section: the machine shape a recipe is written for.

Owned by the recipes/planner work (issue 7); extend here, keep every field documented.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Section, option


@dataclass
class ClusterConfig(Section):
    """Nodes and accelerators the run uses."""

    nodes: int = option(1, ge=1, doc="number of nodes")
    gpus_per_node: int = option(8, ge=0, doc="accelerators per node (0: CPU host, one worker per `cpu_workers`)")
    gpu_type: str = option("H100-80GB", doc="accelerator kind for the planner (H100-80GB, H200-141GB, A100-80GB, B200-192GB)")
    cpu_workers: int = option(1, ge=1, doc="policy workers on a CPU host (gloo ranks)")
