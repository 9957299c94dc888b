"""The run directory: one folder holds everything a run writes, so it can be resumed,
plotted, copied or deleted as a unit.

    <run>/
      config.yaml            the fully resolved recipe of the latest start
      metrics.jsonl          one JSON object per step (see docs/observability.md)
      checkpoints/
        latest               text file naming the newest complete checkpoint ("step-40")
        step-40/             complete: COMPLETE marker, run_state.json, rng.pt, policy/ ...
        .tmp-step-50/        being written (or left by a crash; removed on the next start)
      tensorboard/           event files when trainer.logging.tensorboard
      wandb/                 W&B files when trainer.logging.wandb
      ray/                   Ray's temp and session files for a locally started cluster
      logs/                  worker logs
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def create(cls, root: str | Path) -> "RunDir":
        run = cls(Path(root).resolve())
        run.root.mkdir(parents=True, exist_ok=True)
        run.checkpoints.mkdir(exist_ok=True)
        run.logs.mkdir(exist_ok=True)
        return run

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def wandb(self) -> Path:
        return self.root / "wandb"

    @property
    def ray(self) -> Path:
        return self.root / "ray"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


def default_run_dir(recipe_name: str, base: str | Path = "runs") -> Path:
    """`runs/<recipe name>` relative to the working directory (trainer.run_dir overrides it)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in recipe_name) or "unnamed"
    return Path(base) / safe
