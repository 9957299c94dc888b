"""Cluster profiles: where and how `gdpo launch` submits a recipe (clusters/*.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import yaml

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.schema import Section, build, option


@dataclass
class RayOptions(Section):
    """The Ray cluster the job script starts across the allocation."""

    port: int = option(6379, ge=1, le=65535, doc="Ray GCS port on the head node")
    wait_s: int = option(600, ge=1, doc="seconds to wait for every node's GPUs to join")


@dataclass
class ClusterProfile(Section):
    """One cluster: scheduler account, container, mounts and the shared job directory."""

    executor: Literal["slurm", "local"] = option(doc="slurm (sbatch + pyxis container) or local (this machine)")
    job_dir: str = option(doc="shared directory for job scripts, logs and run directories")
    account: Optional[str] = option(None, doc="Slurm account (required for slurm)")
    partition: Optional[str] = option(None, doc="Slurm partition")
    gpus_per_node: Optional[int] = option(None, ge=0, doc="GPUs per node of the partition; checked against the recipe")
    time: str = option("04:00:00", doc="Slurm time limit per job (HH:MM:SS); requeue continues after it")
    qos: Optional[str] = option(None, doc="Slurm QoS")
    exclusive: bool = option(True, doc="whole nodes (#SBATCH --exclusive)")
    requeue: bool = option(True, doc="let Slurm requeue the job after preemption or node failure")
    signal_before_end_s: int = option(180, ge=0, doc="SIGTERM this many seconds before the time limit (checkpoint)")
    container_image: Optional[str] = option(None, doc="pyxis image: a .sqsh file or registry#image:tag")
    container_mounts: list[str] = option(default_factory=list, doc="SRC:DST mounts (the job_dir is mounted too)")
    workdir: str = option("/opt/gdpo-megatron", doc="the project directory inside the container")
    env: dict[str, str] = option(default_factory=dict, doc="environment variables for every node")
    ray: RayOptions = option(default_factory=RayOptions, doc="Ray cluster bootstrap")

    def validate(self) -> None:
        if self.executor == "slurm":
            if not self.account:
                raise ConfigError("account: a Slurm profile needs an account")
            if not self.container_image:
                raise ConfigError("container_image: a Slurm profile needs a container image (see docs/containers.md)")
        for mount in self.container_mounts:
            if ":" not in mount:
                raise ConfigError(f"container_mounts: {mount!r} is not SRC:DST")

    def mount_pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for mount in self.container_mounts:
            source, destination = mount.split(":")[:2]
            pairs.append((source, destination))
        return pairs


def load_profile(path: str | Path) -> ClusterProfile:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cluster profile not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a cluster profile must be a mapping")
    return build(ClusterProfile, data, lambda _key: str(path))
