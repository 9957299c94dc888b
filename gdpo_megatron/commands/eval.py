"""`gdpo eval`: score a fixed set of responses against a task's records (no model needed).

    gdpo eval --task math --data problems.jsonl --responses samples.jsonl --samples 4 --out metrics.json

Responses file (JSONL): {"id": <record id>, "response": "..."} (several lines per id are
several samples, in order) or {"id": ..., "responses": ["...", ...]}; optional "num_tokens"
(an int, or a list matching "responses"). Without token counts, --tokenizer DIR counts
tokens; otherwise words are counted (reported as length_unit).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gdpo_megatron.data.records import TASKS, RecordError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="score saved responses on a task's records (accuracy, format, Exceed, bugs)")
    parser.add_argument("--task", required=True, choices=[t for t in TASKS if t != "generic"])
    parser.add_argument("--data", required=True, help="JSONL/Parquet records of the task (docs/data.md)")
    parser.add_argument("--responses", required=True, help="JSONL of {id, response | responses, [num_tokens]}")
    parser.add_argument("--samples", type=int, default=None, help="use the first n samples of every prompt")
    parser.add_argument("--max-tokens", type=int, default=None, help="length limit L for Exceed (task default if unset)")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer directory used to count response tokens")
    parser.add_argument("--workers", type=int, default=4, help="parallel sandboxes for the code task")
    parser.add_argument("--out", default=None, help="write the metrics as JSON here")
    parser.set_defaults(func=_run)


def _read_responses(path: str, ids: set[str]) -> dict[str, tuple[list[str], list]]:
    from gdpo_megatron.data.datasets import iter_jsonl

    found: dict[str, tuple[list[str], list]] = {}
    for where, obj in iter_jsonl(Path(path)):
        if not isinstance(obj, dict) or "id" not in obj:
            raise RecordError(f"{where}: each line needs an 'id' and 'response' or 'responses'")
        record_id = str(obj["id"])
        if record_id not in ids:
            raise RecordError(f"{where}: id {record_id!r} is not in the data file")
        texts = obj.get("responses", [obj.get("response")] if "response" in obj else None)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise RecordError(f"{where} (id {record_id!r}): 'response' must be a string, 'responses' a list of strings")
        counts = obj.get("num_tokens")
        counts = [None] * len(texts) if counts is None else ([counts] if isinstance(counts, int) else counts)
        if len(counts) != len(texts):
            raise RecordError(f"{where} (id {record_id!r}): num_tokens must match the responses")
        samples, tokens = found.setdefault(record_id, ([], []))
        samples.extend(texts)
        tokens.extend(counts)
    return found


def _run(args: argparse.Namespace) -> int:
    from gdpo_megatron.data.datasets import read_records
    from gdpo_megatron.evaluation import evaluate_responses, format_table

    try:
        records = read_records(args.data, args.task)
        found = _read_responses(args.responses, {r["id"] for r in records})
        missing = [r["id"] for r in records if r["id"] not in found]
        if missing:
            raise RecordError(f"{args.responses}: no responses for id(s) {', '.join(map(repr, missing[:5]))}")
        counts = {len(found[r["id"]][0]) for r in records}
        n = args.samples if args.samples is not None else min(counts)
        if args.samples is None and len(counts) > 1:
            raise RecordError(f"{args.responses}: prompts have different numbers of samples {sorted(counts)}; pass --samples")
        short = [r["id"] for r in records if len(found[r["id"]][0]) < n]
        if n < 1 or short:
            raise RecordError(f"{args.responses}: --samples {n} but id(s) {', '.join(map(repr, short[:5]))} have fewer")
    except (RecordError, OSError) as exc:
        print(f"gdpo eval: {exc}", file=sys.stderr)
        return 2

    responses = [found[r["id"]][0][:n] for r in records]
    given = [found[r["id"]][1][:n] for r in records]
    if all(t is not None for row in given for t in row):
        num_tokens, unit = given, "tokens (from the responses file)"
    elif args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
        num_tokens = [[len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in row] for row in responses]
        unit = f"tokens ({args.tokenizer})"
    else:
        num_tokens, unit = None, "words (no token counts given)"
    metrics = evaluate_responses(args.task, records, responses, num_tokens=num_tokens, max_tokens=args.max_tokens,
                                 num_workers=args.workers)
    metrics["length_unit"] = unit
    print(format_table(metrics))
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0
