"""Build the nemo-run experiment that runs `gdpo train RECIPE overrides` on a cluster profile.

Slurm: one task per node inside the pyxis container; the task script is the Ray bootstrap
(ray_bootstrap.sh) with the training command as its arguments, written into the job
directory by nemo-run, so a dry run shows exactly what will execute. The run directory is
`<job_dir>/<recipe name>/run`, the same for every attempt: a requeued job, or the same
launch repeated, resumes from its last checkpoint (`trainer.resume=auto`).

Local: `gdpo train` runs on this machine, which starts its own Ray cluster.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdpo_megatron.config import ConfigError, RecipeConfig
from gdpo_megatron.recipe_checks import load_checked_recipe

from .profile import ClusterProfile

BOOTSTRAP_SCRIPT = Path(__file__).with_name("ray_bootstrap.sh")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LaunchSpec:
    """Everything decided before nemo-run is involved (pure, testable without it)."""

    recipe: RecipeConfig
    profile: ClusterProfile
    run_dir: str
    train_command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    setup_lines: str = ""
    task_script: str = ""


def path_in_container(path: Path, profile: ClusterProfile) -> str:
    """Where a host file appears inside the container: under the project or a mount."""
    path = path.resolve()
    try:
        return str(Path(profile.workdir) / path.relative_to(PROJECT_ROOT))
    except ValueError:
        pass
    for source, destination in [*profile.mount_pairs(), (profile.job_dir, profile.job_dir)]:
        try:
            return str(Path(destination) / path.relative_to(Path(source).resolve()))
        except ValueError:
            continue
    raise ConfigError(f"{path}: the recipe is not visible inside the container; put it under the project "
                      f"({PROJECT_ROOT}), the job_dir or one of container_mounts")


def make_spec(recipe_path: str | Path, overrides: list[str], profile: ClusterProfile) -> LaunchSpec:
    recipe_path = Path(recipe_path)
    recipe = load_checked_recipe(recipe_path, overrides)
    job_dir = Path(profile.job_dir).expanduser()
    if profile.executor == "local":
        job_dir = job_dir.resolve()
    run_dir = str(job_dir / recipe.name / "run")
    tail = [*overrides, f"trainer.run_dir={run_dir}", "trainer.resume=auto"]
    if profile.executor == "local":
        command = ["gdpo", "train", str(recipe_path.resolve()), *tail]
        script = f"cd {shlex.quote(str(PROJECT_ROOT))}\n{shlex.join(command)}\n"
        return LaunchSpec(recipe, profile, run_dir, command, dict(profile.env), task_script=script)

    cluster = recipe.cluster
    if cluster.gpus_per_node == 0:
        raise ConfigError(f"cluster.gpus_per_node: recipe {recipe_path} is for a CPU host; launch it with a local profile")
    if profile.gpus_per_node is not None and profile.gpus_per_node != cluster.gpus_per_node:
        raise ConfigError(f"cluster.gpus_per_node: the recipe asks for {cluster.gpus_per_node} GPUs per node but the "
                          f"profile's nodes have {profile.gpus_per_node}; override cluster.gpus_per_node="
                          f"{profile.gpus_per_node} (and re-plan) or pick another profile")
    command = ["gdpo", "train", path_in_container(recipe_path, profile), *tail]
    env = {**profile.env,
           "GDPO_RAY_PORT": str(profile.ray.port),
           "GDPO_EXPECTED_GPUS": str(cluster.nodes * cluster.gpus_per_node),
           "GDPO_RAY_WAIT_S": str(profile.ray.wait_s),
           "GDPO_RUN_DIR": run_dir,
           "GDPO_WORKDIR": profile.workdir}
    # Runs in the sbatch shell on the first node, outside the container, where scontrol exists.
    setup = ('GDPO_RAY_HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)\n'
             'export GDPO_RAY_HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$GDPO_RAY_HEAD_NODE" hostname --ip-address '
             "| awk '{print $1}')\n")
    bootstrap = BOOTSTRAP_SCRIPT.read_text()
    if bootstrap.startswith("#!"):
        bootstrap = bootstrap.split("\n", 1)[1]   # nemo-run writes its own shebang
    script = f"set -- {shlex.join(command)}\n{bootstrap}"
    return LaunchSpec(recipe, profile, run_dir, command, env, setup, script)


def build_experiment(spec: LaunchSpec, title: str | None = None) -> tuple[Any, Any]:
    """The nemo-run Experiment and the task Script for a spec (nemo-run is imported here: ~5 s).

    nemo-run only accepts tasks inside the experiment's context manager, so the caller adds it.
    """
    import nemo_run as run

    profile = spec.profile
    if profile.executor == "local":
        executor = run.LocalExecutor(ntasks_per_node=1, env_vars=spec.env)
    else:
        cluster = spec.recipe.cluster
        additional: dict[str, Any] = {}
        if profile.requeue:
            additional["requeue"] = True
        executor = run.SlurmExecutor(
            account=profile.account, partition=profile.partition, job_name_prefix=f"gdpo-{spec.recipe.name}.", qos=profile.qos, time=profile.time,
            nodes=cluster.nodes, ntasks_per_node=1, gpus_per_node=cluster.gpus_per_node,
            exclusive=profile.exclusive or None,
            signal=f"TERM@{profile.signal_before_end_s}" if profile.signal_before_end_s else None,
            container_image=profile.container_image,
            container_mounts=[*profile.container_mounts, f"{profile.job_dir}:{profile.job_dir}"],
            env_vars=spec.env, setup_lines=spec.setup_lines, additional_parameters=additional or None,
            tunnel=run.LocalTunnel(job_dir=profile.job_dir), packager=run.Packager())
    return run.Experiment(title or f"gdpo-{spec.recipe.name}", executor=executor), run.Script(inline=spec.task_script)
