"""MetricsLogger: one call per step fans the metrics out to every sink and the progress line."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, TextIO

from .jsonl import JsonlWriter, make_record
from .keys import check
from .progress import ProgressDisplay
from .sinks import SINKS, MetricSink, SinkContext, enabled_sinks


class MetricsLogger:
    """Writes `<run_dir>/metrics.jsonl` always, TensorBoard/W&B when `trainer.logging` says so.

    `run_dir`: a path or a `RunDir`. `logging_config`: the recipe's `trainer.logging`.
    `resume_from_step`: the checkpoint step a resumed run continues from (None or 0 for a
    fresh run); records after it are removed from the files so they match an
    uninterrupted run.
    """

    def __init__(self, run_dir: Any, logging_config: Any = None, *, total_steps: int,
                 run_name: str | None = None, resume_from_step: int | None = None,
                 config: Mapping[str, Any] | None = None, stream: TextIO | None = None) -> None:
        # A RunDir carries its path in .root (not to be confused with PurePath.root, "/").
        self.run_dir = Path(run_dir.root if not isinstance(run_dir, (str, Path)) else run_dir)
        # Step 0 has no checkpoint: resuming "from 0" is a fresh start.
        resume_step = resume_from_step or None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = JsonlWriter(self.run_dir / "metrics.jsonl", resume_step=resume_step)
        context = SinkContext(self.run_dir, run_name or self.run_dir.name, resume_step, logging_config, config)
        self.sinks: dict[str, MetricSink] = {}
        try:
            for name in enabled_sinks(logging_config):
                self.sinks[name] = SINKS.get(name)(context)
        except BaseException:
            self.close()
            raise
        self.progress = ProgressDisplay(
            total_steps,
            mode=getattr(logging_config, "progress", "auto"),
            stream=stream,
            extra_keys=getattr(logging_config, "progress_keys", ()),
            start_step=resume_from_step or 0,
        )

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Record one step; returns the cleaned record (what metrics.jsonl holds).

        Every key must be declared in `metrics.keys`: an undeclared one is logged as a warning
        (and written), or raises under GDPO_STRICT_METRICS=1 as in the test suite.
        """
        check(metrics)
        record = make_record(step, metrics)
        self.jsonl.write(record)
        for sink in self.sinks.values():
            sink.write(step, record)
        if hasattr(self, "progress"):
            self.progress.update(step, record)
        return record

    def last_step(self) -> int | None:
        """The step of the last record in metrics.jsonl (after the resume cut), None if empty."""
        return self.jsonl.last_step

    def message(self, text: str) -> None:
        """A human message that does not garble the progress line."""
        self.progress.log(text)

    def close(self) -> None:
        if hasattr(self, "progress"):
            self.progress.close()
        for sink in self.sinks.values():
            sink.close()
        self.sinks = {}
        self.jsonl.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
