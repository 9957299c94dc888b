"""The `data` section: prompt datasets and templates.

Owned by the rewards/data work (issue 5); extend here, keep every field documented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .schema import Section, option


@dataclass
class DataConfig(Section):
    """Training and validation prompts."""

    task: str = option("synthetic", doc="task whose prompt format and record schema the data follows")
    train_path: Optional[str] = option(None, doc="JSONL or Parquet file of training records (null: synthetic)")
    val_path: Optional[str] = option(None, doc="held-out records for validation")
    max_prompt_tokens: int = option(512, ge=1, doc="prompts longer than this are dropped (counted)")
    shuffle: bool = option(True, doc="shuffle each epoch (seeded)")
    args: dict[str, Any] = option(default_factory=dict, doc="task-specific options (e.g. synthetic task size)")
