"""metrics.jsonl: one JSON object per logged step, appended and flushed as it happens.

On resume from step k the file is cut back to the lines with step <= k (and a torn last
line from a crash is dropped), so the finished file equals that of an uninterrupted run.
Non-finite numbers are written as null: the file stays strict JSON for jq, pandas, etc.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping


class MetricsFileError(ValueError):
    """metrics.jsonl is missing or unreadable; the message names the file and line."""


def clean_value(key: str, value: Any) -> Any:
    """A JSON-safe scalar: tensors and numpy scalars become Python numbers, NaN/inf null."""
    if hasattr(value, "item") and callable(value.item):
        if getattr(value, "numel", lambda: 1)() != 1:
            raise TypeError(f"metric {key!r}: expected a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise TypeError(f"metric {key!r}: expected a number, bool or string, got {type(value).__name__}")


def make_record(step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"step": int(step)}
    for key, value in metrics.items():
        if key == "step":
            continue
        record[str(key)] = clean_value(str(key), value)
    return record


def truncate_after(path: Path, step: int) -> int:
    """Keep the lines with step <= `step` (stop at a torn or corrupt line); returns lines kept."""
    if not path.exists():
        return 0
    kept = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # torn write from a crash
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                break
            if record["step"] > step:
                break
            kept.append(line)
    tmp = path.with_name(path.name + ".truncating")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(kept)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return len(kept)


class JsonlWriter:
    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            # A fresh run never appends to an older run's curve.
            self.path.unlink(missing_ok=True)
        else:
            truncate_after(self.path, resume_step)
        records = read_metrics(self.path) if self.path.exists() else []
        self.last_step: int | None = records[-1]["step"] if records else None
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, record: Mapping[str, Any]) -> None:
        self._handle.write(json.dumps(record, allow_nan=False) + "\n")
        self._handle.flush()
        self.last_step = int(record["step"])

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl; a clear error names the file and the bad line."""
    path = Path(path)
    if not path.is_file():
        raise MetricsFileError(f"{path}: no such metrics file (is this a run directory? "
                               "runs write metrics.jsonl from their first step)")
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):
                    break  # a run still writing, or one that crashed mid-line
                raise MetricsFileError(f"{path}:{number}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise MetricsFileError(f"{path}:{number}: expected an object with an integer 'step'")
            records.append(record)
    return records
