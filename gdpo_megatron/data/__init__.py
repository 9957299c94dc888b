"""Prompt data: datasets (JSONL/Parquet/HF/synthetic), record schemas, chat templates, the sampler."""

from .datasets import PromptDataset, load_prompt_dataset, read_records
from .records import TASKS, RecordError, normalize_record
from .sampler import PromptSampler
from .templates import render_plain, render_prompt

__all__ = ["PromptDataset", "PromptSampler", "RecordError", "TASKS", "load_prompt_dataset", "normalize_record",
           "read_records", "render_plain", "render_prompt"]
