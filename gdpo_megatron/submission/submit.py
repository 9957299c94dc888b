"""Run or dry-run a launch spec through nemo-run and report where its files went."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .experiment import LaunchSpec, build_experiment


@dataclass
class Submission:
    experiment_dir: Path
    files: list[Path]
    experiment_id: str


def submit(spec: LaunchSpec, dryrun: bool, title: Optional[str] = None) -> Submission:
    """Dry run: write the job scripts (sbatch, task script, configs) and stop. Otherwise submit.

    Slurm jobs are submitted detached; a local run blocks and streams its logs.
    """
    experiment, task = build_experiment(spec, title)
    with experiment:
        experiment.add(task, name="train")
        if dryrun:
            experiment.dryrun(log=False, delete_exp_dir=False)
        elif spec.profile.executor == "slurm":
            experiment.run(detach=True)
        else:
            experiment.run(sequential=True, tail_logs=True, detach=False)
    directory = Path(experiment._exp_dir)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    return Submission(directory, files, experiment._id)
