"""Math datasets: DeepScaleR-Preview (training), AIME 2024 and MATH-500 (evaluation).

Upstream schemas (Hugging Face dataset cards / viewer features; tests/fixtures/datasets/README.md
says how each was checked):
- agentica-org/DeepScaleR-Preview-Dataset (card b6ae8c6): one `deepscaler.json`, `problem`,
  `answer`, `solution` (one `train` split, 40,315 rows; a few answers are empty and dropped).
- HuggingFaceH4/aime_2024 (card 2fe88a2): `id` (int), `problem`, `solution`, `answer`, `url`,
  `year` (`train` split, 30 rows).
- HuggingFaceH4/MATH-500: `problem`, `solution`, `answer`, `subject`, `level` (int), `unique_id`
  (`test` split, 500 rows).

Records: {"id", "prompt", "answer"} plus provenance fields; the prompt is the problem followed
by the instruction DeepScaleR trains with (final answer in \\boxed{}), so the math reward's
answer extraction applies.
"""

from __future__ import annotations

from typing import Any, Optional

from .common import Conversion, Dropped, Output, content_id, convert_rows, read_source, split_records

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."


def _text(row: Any, key: str) -> str:
    if not isinstance(row, dict):
        raise Dropped("row is not an object")
    value = row.get(key)
    if value is None or str(value).strip() == "":
        raise Dropped(f"missing {key!r}")
    return str(value).strip()


def math_record(record_id: str, problem: str, answer: str, **extra: Any) -> dict:
    return {"id": record_id, "prompt": f"{problem}\n\n{INSTRUCTION}", "answer": answer, **extra}


def convert_deepscaler(source: str, val_fraction: float, seed: int) -> Conversion:
    hub_id = "agentica-org/DeepScaleR-Preview-Dataset"
    result = Conversion(outputs=[], sources=[{"name": hub_id, "source": source, "split": "train"}])

    def one(row: Any, where: str) -> dict:
        problem, answer = _text(row, "problem"), _text(row, "answer")
        return math_record(content_id("deepscaler", problem, answer), problem, answer)

    records = convert_rows(read_source(source, hub_id, "train", None), one, "math", result)
    train, val = split_records(records, val_fraction, seed)
    result.outputs = [Output("deepscaler.jsonl", "train", train), Output("deepscaler-val.jsonl", "validation", val)]
    return result


def convert_aime24(source: str, val_fraction: float, seed: int) -> Conversion:
    hub_id = "HuggingFaceH4/aime_2024"
    result = Conversion(outputs=[], sources=[{"name": hub_id, "source": source, "split": "train"}])

    def one(row: Any, where: str) -> dict:
        problem, answer = _text(row, "problem"), _text(row, "answer")
        return math_record(f"aime24-{_text(row, 'id')}", problem, answer, url=row.get("url"))

    records = convert_rows(read_source(source, hub_id, "train", None), one, "math", result)
    result.outputs = [Output("aime24.jsonl", "test", records)]
    return result


def convert_math500(source: str, val_fraction: float, seed: int) -> Conversion:
    hub_id = "HuggingFaceH4/MATH-500"
    result = Conversion(outputs=[], sources=[{"name": hub_id, "source": source, "split": "test"}])

    def one(row: Any, where: str) -> dict:
        problem, answer = _text(row, "problem"), _text(row, "answer")
        # unique_id is the MATH file path, e.g. "test/precalculus/807.json": stable and unique.
        unique = _text(row, "unique_id").removesuffix(".json").replace("/", "-")
        return math_record(f"math500-{unique}", problem, answer, subject=row.get("subject"), level=row.get("level"))

    records = convert_rows(read_source(source, hub_id, "test", None), one, "math", result)
    result.outputs = [Output("math500.jsonl", "test", records)]
    return result
