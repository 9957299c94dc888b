"""The `cluster` section: the machine shape a recipe is written for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .schema import Section, option


@dataclass
class ClusterConfig(Section):
    """Nodes and accelerators the run uses."""

    nodes: int = option(1, ge=1, doc="number of nodes")
    gpus_per_node: int = option(8, ge=0, doc="accelerators per node (0: CPU host, one worker per `cpu_workers`)")
    gpu_type: str = option("H100-80GB", doc="accelerator kind for the planner (H100-80GB, H200-141GB, A100-80GB, "
                                             "B200-192GB, ...; `gdpo plan` lists them)")
    gpu_memory_gib: Optional[float] = option(None, gt=0, doc="device memory in GiB for a kind the planner does not "
                                                             "know (or to plan with a smaller budget)")
    cpu_workers: int = option(1, ge=1, doc="policy workers on a CPU host (gloo ranks)")

    @property
    def is_cpu(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node
