"""`gdpo eval`: generate with a model and score, or score a fixed set of saved responses.

    gdpo eval --task tool_calling --data data/bfcl/val.jsonl --model runs/NAME --samples 1 --limit 64
    gdpo eval --task math --data problems.jsonl --responses samples.jsonl --samples 4 --out metrics.json

--model is an HF checkpoint directory or a run directory (its final_model/); generation runs
vLLM in this process (CPU build or GPU) with the model's own chat template. --save-responses
writes what was generated in the --responses format, so it can be scored again.

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
    parser = subparsers.add_parser("eval", help="generate with a model (or take saved responses) and score a task's records")
    parser.add_argument("--task", required=True, choices=[t for t in TASKS if t != "generic"])
    parser.add_argument("--data", required=True, help="JSONL/Parquet records of the task (docs/data.md)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--responses", help="JSONL of {id, response | responses, [num_tokens]}")
    source.add_argument("--model", help="HF checkpoint dir or run dir: generate the responses with vLLM")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per prompt (with --model: generated, default 1; else the first n saved)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N records (with --max-prompt-tokens: of those within it)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="--model: response limit (default: --max-tokens "
                        "or the task's limit)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="--model: sampling temperature (default 0 with one sample, else 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="--model: sampling seed")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="--model: skip records whose rendered prompt is longer (as training's data.max_prompt_tokens)")
    parser.add_argument("--save-responses", default=None, help="--model: write the generated responses (JSONL) here")
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


def _load_records(args: argparse.Namespace, limit: bool = True) -> list[dict]:
    from gdpo_megatron.data.datasets import read_records

    records = read_records(args.data, args.task)
    return records[: args.limit] if args.limit and limit else records


def _run(args: argparse.Namespace) -> int:
    if args.model:
        return _run_model(args)
    from gdpo_megatron.evaluation import evaluate_responses

    try:
        records = _load_records(args)
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
    return _report(metrics, args.out)


def _report(metrics: dict, out: str | None) -> int:
    from gdpo_megatron.evaluation import format_table

    print(format_table(metrics))
    if out:
        Path(out).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from gdpo_megatron.config.errors import ConfigError
    from gdpo_megatron.evaluation import TASK_MAX_TOKENS, evaluate_responses
    from gdpo_megatron.evaluation.generate import generate_samples, resolve_model

    samples = args.samples or 1
    try:
        records = _load_records(args, limit=args.max_prompt_tokens is None)
        model_dir = resolve_model(args.model)
    except (RecordError, ConfigError, OSError) as exc:
        print(f"gdpo eval: {exc}", file=sys.stderr)
        return 2
    limit = args.max_tokens if args.max_tokens is not None else TASK_MAX_TOKENS[args.task]
    max_new = args.max_new_tokens or limit
    temperature = args.temperature if args.temperature is not None else (0.0 if samples == 1 else 1.0)
    skipped = 0
    if args.max_prompt_tokens:
        from gdpo_megatron.evaluation.generate import within_prompt_limit

        kept = within_prompt_limit(model_dir, records, args.max_prompt_tokens)
        skipped, records = len(records) - len(kept), kept[: args.limit] if args.limit else kept
        if not records:
            print(f"gdpo eval: every prompt is longer than --max-prompt-tokens {args.max_prompt_tokens}", file=sys.stderr)
            return 2
    print(f"[eval] {model_dir}: {len(records)} records of {args.data}"
          + (f" ({skipped} longer than {args.max_prompt_tokens} tokens skipped)" if skipped else "")
          + f", {samples} sample(s), "
          f"temperature {temperature}, up to {max_new} new tokens", flush=True)
    generated = generate_samples(model_dir, records, samples, max_new, temperature, args.seed,
                                 log=lambda line: print(line, flush=True))
    if args.save_responses:
        with open(args.save_responses, "w", encoding="utf-8") as f:
            for record, texts, counts in zip(records, generated.responses, generated.num_tokens):
                f.write(json.dumps({"id": record["id"], "responses": texts, "num_tokens": counts}) + "\n")
    metrics = evaluate_responses(args.task, records, generated.responses, num_tokens=generated.num_tokens,
                                 max_tokens=limit, num_workers=args.workers)
    metrics.update({"model": str(model_dir), "length_unit": "tokens (generated)", "temperature": temperature,
                    "truncated": generated.truncated, "skipped_long_prompts": skipped, "generation_seconds": round(generated.seconds, 1)})
    return _report(metrics, args.out)
