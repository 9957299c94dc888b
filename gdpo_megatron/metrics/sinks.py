"""Optional metric sinks beyond JSONL: TensorBoard and Weights & Biases.

Both are imported only when enabled, so a run without them never pays their import
time or needs them installed. A sink gets the cleaned record of each step.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from gdpo_megatron.registry import Registry


class MetricSink(Protocol):
    def write(self, step: int, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class SinkSetupError(RuntimeError):
    """A sink enabled in the recipe cannot start (package missing, bad setting)."""


# name -> factory(SinkContext) -> MetricSink
SINKS: Registry[Callable[["SinkContext"], MetricSink]] = Registry("metric sink")


class SinkContext:
    """What a sink factory may need, gathered once by the MetricsLogger."""

    def __init__(self, run_dir: Path, run_name: str, resume_step: int | None,
                 logging_config: Any, config: Mapping[str, Any] | None) -> None:
        self.run_dir = run_dir
        self.run_name = run_name
        self.resume_step = resume_step
        self.logging = logging_config
        self.config = dict(config or {})


def _numeric(record: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    def __init__(self, log_dir: Path, resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise SinkSetupError("trainer.logging.tensorboard=true needs the `tensorboard` package "
                                 "(pip install 'gdpo-megatron[logging]')") from exc
        # purge_step drops events after the resumed step, like metrics.jsonl is truncated.
        purge = resume_step + 1 if resume_step is not None else None
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        for key, value in _numeric(record).items():
            self._writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


class WandbSink:
    """W&B with files under the run directory; one W&B run per run directory, resumed."""

    def __init__(self, context: SinkContext) -> None:
        try:
            import wandb
        except ImportError as exc:
            raise SinkSetupError("trainer.logging.wandb=true needs the `wandb` package "
                                 "(pip install 'gdpo-megatron[logging]')") from exc
        cfg = context.logging
        wandb_dir = context.run_dir / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        # The id lives in the run directory so a resumed run continues the same W&B run.
        id_file = wandb_dir / "run_id"
        if id_file.exists() and context.resume_step is not None:
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
        os.environ.setdefault("WANDB_SILENT", "true")
        # wandb-core writes debug logs and caches under ~/.cache by default; keep them in
        # the run directory (the user's login settings in ~/.config stay where they are).
        os.environ.setdefault("WANDB_CACHE_DIR", str(wandb_dir / "cache"))
        os.environ.setdefault("WANDB_DATA_DIR", str(wandb_dir / "data"))
        self._wandb = wandb
        self._run = wandb.init(
            project=cfg.wandb_project, entity=cfg.wandb_entity, name=context.run_name,
            id=run_id, resume="allow", dir=str(context.run_dir), mode=cfg.wandb_mode,
            config=context.config, settings=wandb.Settings(console="off"),
        )
        # Steps at or below the resumed one were logged by the interrupted process already.
        self._min_step = context.resume_step + 1 if context.resume_step is not None else None

    @property
    def run_path(self) -> Path:
        return Path(self._run.dir).parent

    def write(self, step: int, record: Mapping[str, Any]) -> None:
        if self._min_step is not None and step < self._min_step:
            return
        self._run.log(_numeric(record), step=step)

    def close(self) -> None:
        self._run.finish()


@SINKS.register("tensorboard")
def _tensorboard(context: SinkContext) -> MetricSink:
    return TensorBoardSink(context.run_dir / "tensorboard", context.resume_step)


@SINKS.register("wandb")
def _wandb(context: SinkContext) -> MetricSink:
    return WandbSink(context)


def enabled_sinks(logging_config: Any) -> list[str]:
    """Names of the optional sinks switched on in `trainer.logging`."""
    if logging_config is None:
        return []
    return [name for name in SINKS.names() if getattr(logging_config, name, False)]
