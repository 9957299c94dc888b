"""Prompt datasets: local JSONL / Parquet files, Hugging Face `datasets` (when installed), or
the synthetic task generated from a seed. Bad records name the file and line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Sequence

from gdpo_megatron.config.data import DataConfig

from . import synthetic
from .records import RecordError, normalize_record
from .templates import render_prompt


@dataclass
class PromptDataset(Sequence):
    """Normalized records of one split (each has `id`, `task`, `messages` and its ground truth)."""

    records: list[dict]
    task: str
    source: str
    dropped_too_long: int = 0
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        return self.records[index]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.records)


def iter_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield f"{path}:row {number}", row


def _read_hf(name: str, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise RecordError(f"{name}: reading a Hugging Face dataset needs the `datasets` package "
                          "(pip install datasets -c requirements/constraints-cpu.txt)") from None
    for number, row in enumerate(datasets.load_dataset(name, split=split), start=1):
        yield f"hf:{name}[{split}]:row {number}", row


def read_records(path: str, task: str, fmt: str = "auto", hf_split: str = "train") -> list[dict]:
    """Read and normalize every record of a file; raise RecordError naming the first bad line.

    A missing or bad file that `gdpo data prepare` writes names that command in the error.
    """
    try:
        return _read_records(path, task, fmt, hf_split)
    except RecordError as exc:
        from .prepare import command_for

        command = None if path.startswith("hf:") else command_for(path)
        if command is None:
            raise
        raise RecordError(f"{exc} (this file is written by `{command}`)") from None


def _read_records(path: str, task: str, fmt: str, hf_split: str) -> list[dict]:
    if fmt == "hf" or path.startswith("hf:"):
        name = path[3:] if path.startswith("hf:") else path
        rows, stem = _read_hf(name, hf_split), name.replace("/", "_")
    else:
        file = Path(path)
        if not file.is_file():
            raise RecordError(f"{path}: no such data file")
        kind = fmt if fmt != "auto" else ("parquet" if file.suffix == ".parquet" else "jsonl")
        rows = _read_parquet(file) if kind == "parquet" else iter_jsonl(file)
        stem = file.stem
    records, seen = [], {}
    for number, (where, raw) in enumerate(rows, start=1):
        record = normalize_record(raw, task, where, default_id=f"{stem}-{number}")
        if record["id"] in seen:
            raise RecordError(f"{where}: duplicate id {record['id']!r} (first at {seen[record['id']]})")
        seen[record["id"]] = where
        records.append(record)
    if not records:
        raise RecordError(f"{path}: no records")
    return records


def load_prompt_dataset(data: DataConfig, split: Literal["train", "val"], seed: int,
                        tokenizer: Optional[Any] = None) -> PromptDataset:
    """The split's records. With a tokenizer, prompts over data.max_prompt_tokens are dropped (counted)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    path = data.train_path if split == "train" else data.val_path
    if path is None:
        if data.task != "synthetic":
            raise RecordError(f"data.{split}_path: task {data.task!r} needs a data file (only 'synthetic' is generated)")
        records = [normalize_record(r, "synthetic", f"synthetic:{split}", r["id"])
                   for r in synthetic.generate_problems(split, seed, **data.args)]
        source = f"synthetic:{split}:seed={seed}"
    else:
        records = read_records(path, data.task, data.format, data.hf_split)
        source = path
    dropped = 0
    if tokenizer is not None:
        kept = [r for r in records
                if len(tokenizer(render_prompt(r, tokenizer), add_special_tokens=False)["input_ids"]) <= data.max_prompt_tokens]
        dropped, records = len(records) - len(kept), kept
        if not records:
            raise RecordError(f"{source}: every prompt is longer than data.max_prompt_tokens={data.max_prompt_tokens}")
    return PromptDataset(records=records, task=data.task, source=source, dropped_too_long=dropped)
