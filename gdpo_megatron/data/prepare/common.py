"""What every dataset converter shares: reading the source, the deterministic split, the
manifest, writing JSONL.

A converter turns upstream rows into project records (docs/data.md). Rows it cannot turn
into a valid record are dropped and counted by reason (`Dropped`), never silently lost; the
manifest lists the reasons with the first few row numbers of each.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from gdpo_megatron.data.records import RecordError, normalize_record


class SourceError(RecordError):
    """The upstream data could not be read (missing file, no `datasets` package, bad JSON)."""


class Dropped(Exception):
    """A row that cannot become a record; the message is the reason counted in the manifest."""


@dataclass
class Output:
    """One file a converter writes: its name, its records and which split it holds."""

    filename: str
    split: str  # train, validation or test
    records: list[dict] = field(default_factory=list)


@dataclass
class Conversion:
    """The result of converting one dataset: its output files and what was dropped."""

    outputs: list[Output]
    rows_read: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_examples: dict[str, list[str]] = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)

    def drop(self, where: str, reason: str) -> None:
        self.dropped[reason] += 1
        examples = self.dropped_examples.setdefault(reason, [])
        if len(examples) < 5:
            examples.append(where)


def read_json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a local JSON Lines file or a JSON array file, each with its place `file:line`."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        for number, row in enumerate(rows, start=1):
            yield f"{path}:item {number}", row
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None


def read_parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield f"{path}:row {number}", row


def read_source(source: str, hub_id: str, split: str, revision: Optional[str],
                config: Optional[str] = None) -> Iterator[tuple[str, Any]]:
    """Rows from a local file/directory (JSON, JSONL, Parquet) or, for `hf`, the Hugging Face hub.

    A directory is read file by file in name order (a `git clone` of the dataset repository).
    """
    if source == "hf":
        try:
            import datasets
        except ImportError:
            raise SourceError(f"{hub_id}: reading from the Hugging Face hub needs the `datasets` package "
                              "(pip install 'gdpo-megatron[data]'), or pass --source with a local copy") from None
        rows = datasets.load_dataset(hub_id, config, split=split, revision=revision)
        for number, row in enumerate(rows, start=1):
            yield f"hf:{hub_id}[{split}]:row {number}", row
        return
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl", ".parquet") and p.is_file())
        if not files:
            raise SourceError(f"{path}: no .json, .jsonl or .parquet files in this directory")
    elif path.is_file():
        files = [path]
    else:
        raise SourceError(f"{path}: no such file or directory (the local copy of {hub_id})")
    for file in files:
        yield from (read_parquet_rows(file) if file.suffix == ".parquet" else read_json_rows(file))


def stable_hash(text: str) -> int:
    """A hash that is the same on every machine and Python version (unlike hash())."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def is_validation(record_id: str, val_fraction: float, seed: int) -> bool:
    """Deterministic split: a record is held out when its seeded id hash falls below the fraction."""
    return stable_hash(f"{seed}:{record_id}") % 1_000_000 < round(val_fraction * 1_000_000)


def content_id(prefix: str, *parts: Any) -> str:
    """A stable id from a record's content, for sources without ids of their own."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"{prefix}-{digest[:12]}"


def convert_rows(rows: Iterable[tuple[str, Any]], convert: Callable[[Any, str], dict], task: str,
                 result: Conversion) -> list[dict]:
    """Records of `rows` through `convert(row, where)`; bad rows (Dropped or invalid records) are counted."""
    records: list[dict] = []
    seen: set[str] = set()
    for where, row in rows:
        result.rows_read += 1
        try:
            record = convert(row, where)
            normalize_record(record, task, where, default_id="")  # the project's own validation
        except Dropped as exc:
            result.drop(where, str(exc))
            continue
        except RecordError as exc:
            result.drop(where, "invalid record: " + str(exc).split(": ", 1)[-1])
            continue
        if record["id"] in seen:
            result.drop(where, "duplicate id")
            continue
        seen.add(record["id"])
        records.append(record)
    return records


def split_records(records: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    train, val = [], []
    for record in records:
        (val if is_validation(record["id"], val_fraction, seed) else train).append(record)
    return train, val


def write_outputs(result: Conversion, out_dir: Path, name: str, settings: dict) -> Path:
    """Write each output as JSONL (sorted keys, one record a line) and `<name>.manifest.json`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for output in result.outputs:
        if not output.records and output.split == "validation" and settings.get("val_fraction") == 0:
            continue  # no random held-out split was asked for
        if not output.records:
            raise SourceError(f"{name}: no records for {output.filename} ({result.rows_read} rows read, "
                              f"dropped: {dict(result.dropped) or 'none'})")
        path = out_dir / output.filename
        staging = path.with_suffix(path.suffix + ".partial")
        with open(staging, "w", encoding="utf-8") as f:
            for record in output.records:
                f.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        staging.replace(path)
        files[output.filename] = {"split": output.split, "records": len(output.records),
                                  "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    manifest = {
        "dataset": name,
        "sources": result.sources,
        "settings": settings,
        "rows_read": result.rows_read,
        "files": files,
        "dropped": {reason: {"count": count, "examples": result.dropped_examples[reason]}
                    for reason, count in sorted(result.dropped.items())},
    }
    manifest_path = out_dir / f"{name}.manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest_path
