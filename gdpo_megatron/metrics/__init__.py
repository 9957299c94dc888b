"""Metrics: JSONL in the run directory, TensorBoard and W&B sinks, progress display.

Every key is declared in `gdpo_megatron.metrics.keys` (docs/observability.md is generated from it).
"""

from .jsonl import MetricsFileError, read_metrics, truncate_after
from .logger import MetricsLogger
from .progress import ProgressDisplay, format_duration, progress_line
from .sinks import SINKS, SinkSetupError
from .system import rss_gb

__all__ = [
    "MetricsFileError", "MetricsLogger", "ProgressDisplay", "SINKS", "SinkSetupError",
    "format_duration", "progress_line", "read_metrics", "rss_gb", "truncate_after",
]
