"""The `data` section: prompt datasets and templates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from .errors import ConfigError, did_you_mean
from .schema import Section, option

TASKS = ("synthetic", "math", "code", "tool_calling", "generic")


@dataclass
class DataConfig(Section):
    """Training and validation prompts."""

    task: str = option("synthetic", doc="task whose record schema the data follows: "
                                        "synthetic, math, code, tool_calling, generic (see docs/data.md)")
    train_path: Optional[str] = option(None, doc="JSONL or Parquet file of training records, or hf:<name> "
                                                 "(null: the synthetic task is generated from the seed)")
    val_path: Optional[str] = option(None, doc="held-out records for validation")
    format: Literal["auto", "jsonl", "parquet", "hf"] = option(
        "auto", doc="file format; auto: .parquet is Parquet, anything else JSONL, hf:<name> a HF dataset")
    hf_split: str = option("train", doc="split read from a Hugging Face dataset")
    max_prompt_tokens: int = option(512, ge=1, doc="prompts longer than this are dropped (counted)")
    shuffle: bool = option(True, doc="shuffle each epoch (seeded by the recipe seed and the epoch)")
    args: dict[str, Any] = option(default_factory=dict, doc="task-specific options; synthetic: num_train, num_val, "
                                                            "max_operand, ops (e.g. '+-'), val_every")

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task: unknown task {self.task!r}{did_you_mean(self.task, TASKS)}; "
                              f"tasks: {', '.join(TASKS)}")
        if self.task != "synthetic" and self.train_path is None:
            raise ConfigError(f"train_path: task {self.task!r} needs a data file (only 'synthetic' is generated)")
