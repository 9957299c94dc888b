"""`gdpo launch --dryrun` through real nemo-run. No Slurm controller exists here, so the
Slurm tests are fake_slurm: they check the sbatch and task scripts nemo-run writes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gdpo_megatron.cli import main
from gdpo_megatron.config import ConfigError
from gdpo_megatron.submission import load_profile, make_spec

ROOT = Path(__file__).resolve().parents[2]
RECIPE_70B = ROOT / "recipes/llama-3.3-70b-instruct/math-gdpo-8n8g.yaml"
TINY = ROOT / "recipes/tiny/synthetic-gdpo-1n2c.yaml"


@pytest.fixture(scope="module")
def nemorun_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("nemorun")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEMORUN_HOME", str(home))
        # nemo-run's packaging step runs `mkdir` through invoke, which reads stdin; pytest's
        # captured stdin raises on read, a terminal or an empty stream does not.
        mp.setattr(sys, "stdin", io.StringIO(""))
        yield home


def write_profile(directory: Path, **changes) -> Path:
    profile = yaml.safe_load((ROOT / "clusters/slurm-pyxis.yaml").read_text())
    profile.update(job_dir=str(directory / "jobs"), **changes)
    path = directory / "cluster.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.fixture(scope="module")
def slurm_dryrun(nemorun_home, tmp_path_factory):
    """One Slurm dry run shared by the assertions below (nemo-run's import costs ~5 s)."""
    directory = tmp_path_factory.mktemp("slurm")
    profile = write_profile(directory)
    code = main(["launch", str(RECIPE_70B), "trainer.max_steps=7", "algorithm.loss.kl_coef=0.001",
                 "--cluster", str(profile), "--dryrun"])
    assert code == 0
    (experiment,) = (nemorun_home / "experiments").glob("gdpo-llama3.3-70b-math-gdpo/*")
    sbatch = next(experiment.glob("*_sbatch.sh")).read_text()
    task = (experiment / "train/scripts/train.sh").read_text()
    return directory, sbatch, task


def test_fake_slurm_sbatch_requests_nodes_gpus_and_requeue(slurm_dryrun):
    directory, sbatch, _ = slurm_dryrun
    for line in ["#SBATCH --nodes=8", "#SBATCH --gpus-per-node=8", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --account=my-account", "#SBATCH --partition=batch", "#SBATCH --time=04:00:00",
                 "#SBATCH --requeue", "#SBATCH --signal=TERM@180", "#SBATCH --exclusive"]:
        assert line in sbatch.splitlines(), line
    jobs = directory / "jobs"
    srun = next(line for line in sbatch.splitlines() if line.startswith("srun ") and "--container-image" in line)
    assert "--container-image /lustre/fsw/my-account/images/gdpo-megatron.sqsh" in srun
    mounts = srun.split("--container-mounts ")[1].split()[0].split(",")
    assert mounts[:3] == ["/lustre/fsw/my-account/data:/data", "/lustre/fsw/my-account/hf-cache:/hf-cache",
                          f"{jobs}:{jobs}"]
    assert f"--output {jobs}/" in srun      # logs land in the shared job directory


def test_fake_slurm_environment_points_ray_and_run_dir(slurm_dryrun):
    directory, sbatch, _ = slurm_dryrun
    run_dir = directory / "jobs" / "llama3.3-70b-math-gdpo" / "run"
    for line in ["export GDPO_EXPECTED_GPUS=64", "export GDPO_RAY_PORT=6379", f"export GDPO_RUN_DIR={run_dir}",
                 "export GDPO_WORKDIR=/opt/gdpo-megatron", "export HF_HOME=/hf-cache", "export HF_HUB_OFFLINE=1"]:
        assert line in sbatch.splitlines(), line
    assert 'export GDPO_RAY_HEAD_IP=$(srun --nodes=1 --ntasks=1 -w "$GDPO_RAY_HEAD_NODE" hostname' in sbatch


def test_fake_slurm_task_script_bootstraps_ray_and_runs_the_train_command(slurm_dryrun):
    directory, _, task = slurm_dryrun
    run_dir = directory / "jobs" / "llama3.3-70b-math-gdpo" / "run"
    first = task.splitlines()[1]
    assert first == ("set -- gdpo train /opt/gdpo-megatron/recipes/llama-3.3-70b-instruct/math-gdpo-8n8g.yaml "
                     f"trainer.max_steps=7 algorithm.loss.kl_coef=0.001 trainer.run_dir={run_dir} trainer.resume=auto")
    head = task.index('ray start --head --node-ip-address="$GDPO_RAY_HEAD_IP"')
    wait_gpus = task.index("ray.cluster_resources().get(\"GPU\", 0)")
    train = task.index('RAY_ADDRESS="$address" "$@" &')
    stop = task.index("ray stop --force")
    worker = task.index('ray start --address="$address"')
    assert head < wait_gpus < train and stop < worker      # head: start, wait for GPUs, train; trap stops Ray
    assert subprocess.run(["bash", "-n"], input=task, text=True).returncode == 0


def test_local_dryrun_runs_gdpo_train_directly(nemorun_home, tmp_path, capsys):
    profile = tmp_path / "local.yaml"
    profile.write_text(f"executor: local\njob_dir: {tmp_path / 'jobs'}\nenv: {{OMP_NUM_THREADS: '1'}}\n")
    assert main(["launch", str(TINY), "trainer.max_steps=2", "--cluster", str(profile), "--dryrun"]) == 0
    (experiment,) = (nemorun_home / "experiments").glob("gdpo-tiny-synthetic-gdpo/*")
    task = (experiment / "train/scripts/train.sh").read_text().splitlines()
    assert task[1:] == [f"cd {ROOT}", f"gdpo train {TINY} trainer.max_steps=2 "
                                      f"trainer.run_dir={tmp_path / 'jobs/tiny-synthetic-gdpo/run'} trainer.resume=auto"]
    assert "ray start" not in "\n".join(task)


def test_shipped_profiles_load_and_bad_profiles_are_refused(tmp_path):
    assert load_profile(ROOT / "clusters/slurm-pyxis.yaml").executor == "slurm"
    assert load_profile(ROOT / "clusters/local.yaml").executor == "local"
    with pytest.raises(ConfigError, match=r"account: a Slurm profile needs an account"):
        load_profile(write_profile(tmp_path, account=None))
    with pytest.raises(ConfigError, match=r"gpus_per_node: the recipe asks for 8 GPUs per node but the profile's nodes have 4"):
        make_spec(RECIPE_70B, [], load_profile(write_profile(tmp_path, gpus_per_node=4)))
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(f"defaults: {RECIPE_70B}\n")
    with pytest.raises(ConfigError, match=r"not visible inside the container"):
        make_spec(outside, [], load_profile(write_profile(tmp_path)))
    # The same recipe under a mounted folder is found at the mount's destination.
    spec = make_spec(outside, [], load_profile(write_profile(tmp_path, container_mounts=[f"{tmp_path}:/mnt/recipes"])))
    assert spec.train_command[2] == "/mnt/recipes/elsewhere.yaml"


def test_launch_refuses_a_plan_that_does_not_fit(tmp_path, capsys):
    code = main(["launch", str(RECIPE_70B), "policy.parallel.tensor=1", "policy.parallel.pipeline=1",
                 "policy.parallel.virtual_pipeline=null", "--cluster", str(write_profile(tmp_path)), "--dryrun"])
    assert code == 1
    assert "the plan does not fit" in capsys.readouterr().out
