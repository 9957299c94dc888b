"""Code datasets of the code recipes: Eurus-2-RL-Data's code problems (training) and
CodeContests (validation).

Upstream schemas (Hugging Face dataset cards / viewer features; tests/fixtures/datasets/README.md
says how each was checked):
- PRIME-RL/Eurus-2-RL-Data (card 9776b13, verl format): `data_source`, `prompt` (list of {"role", "content"}),
  `ability` ("math" or "code"), `reward_model` {"style": "rule", "ground_truth": <JSON string>},
  `extra_info` {"split", "index"}. A code ground truth is {"inputs": [...], "outputs": [...]}
  (stdin/stdout, APPS/TACO style), with "fn_name" for call-based problems.
- deepmind/code_contests: `name`, `description`, `public_tests` / `private_tests` /
  `generated_tests` {"input": [...], "output": [...]}, `source`, `difficulty`, ... (`test` split).
"""

from __future__ import annotations

import json
from typing import Any

from .common import Conversion, Dropped, Output, content_id, convert_rows, read_source, split_records

CODE_INSTRUCTION = ("Write a complete Python 3 program that reads from standard input and writes to standard "
                    "output. Put the program in one ```python code block.")


def _function_asserts(fn_name: str, inputs: list, outputs: list) -> list[str]:
    asserts = []
    for args, expected in zip(inputs, outputs):
        args = args if isinstance(args, list) else [args]
        # Call-based APPS/TACO problems wrap the single expected value in a list.
        if isinstance(expected, list) and len(expected) == 1:
            expected = expected[0]
        call = f"{fn_name}({', '.join(repr(a) for a in args)})"
        asserts.append(f"assert {call} == {expected!r}")
    return asserts


def tests_from_ground_truth(text: Any) -> dict:
    try:
        truth = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        raise Dropped("ground truth is not JSON") from None
    if not isinstance(truth, dict):
        raise Dropped("ground truth is not an object of inputs/outputs")
    inputs, outputs = truth.get("inputs"), truth.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or not inputs or len(inputs) != len(outputs):
        raise Dropped("ground truth needs equally long non-empty 'inputs' and 'outputs'")
    if truth.get("fn_name"):
        return {"style": "function", "asserts": _function_asserts(truth["fn_name"], inputs, outputs)}
    if not all(isinstance(x, str) for x in inputs + outputs):
        raise Dropped("stdin tests need string inputs and outputs")
    return {"style": "stdin", "cases": [{"input": i, "output": o} for i, o in zip(inputs, outputs)]}


def convert_eurus2_code(source: str, val_fraction: float, seed: int) -> Conversion:
    hub_id = "PRIME-RL/Eurus-2-RL-Data"
    result = Conversion(outputs=[], sources=[{"name": hub_id, "source": source, "split": "train",
                                              "filter": "ability == 'code'"}])

    def one(row: Any, where: str) -> dict:
        if not isinstance(row, dict):
            raise Dropped("row is not an object")
        if row.get("ability") != "code":
            raise Dropped("not a code problem (ability != 'code')")
        messages = row.get("prompt")
        if not isinstance(messages, list) or not messages:
            raise Dropped("missing 'prompt' messages")
        messages = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
        tests = tests_from_ground_truth((row.get("reward_model") or {}).get("ground_truth"))
        index = (row.get("extra_info") or {}).get("index")
        record_id = (f"eurus2-{row.get('data_source', 'code')}-{index}" if index is not None
                     else content_id("eurus2", messages, tests))
        return {"id": record_id, "messages": messages, "tests": tests, "data_source": row.get("data_source")}

    records = convert_rows(read_source(source, hub_id, "train", None), one, "code", result)
    train, val = split_records(records, val_fraction, seed)
    result.outputs = [Output("eurus2_code.jsonl", "train", train), Output("eurus2_code-val.jsonl", "validation", val)]
    return result


def convert_codecontests(source: str, val_fraction: float, seed: int) -> Conversion:
    hub_id = "deepmind/code_contests"
    result = Conversion(outputs=[], sources=[{"name": hub_id, "source": source, "split": "test",
                                              "tests": "public + private"}])

    def one(row: Any, where: str) -> dict:
        if not isinstance(row, dict) or not row.get("name") or not row.get("description"):
            raise Dropped("missing 'name' or 'description'")
        cases = []
        for key in ("public_tests", "private_tests"):
            tests = row.get(key) or {}
            cases += [{"input": i, "output": o} for i, o in zip(tests.get("input") or [], tests.get("output") or [])]
        if not cases:
            raise Dropped("no public or private tests")
        return {"id": f"codecontests-{row['name'].split('.')[0].strip().replace(' ', '_')}",
                "prompt": f"{row['description'].strip()}\n\n{CODE_INSTRUCTION}",
                "tests": {"style": "stdin", "cases": cases}, "difficulty": row.get("difficulty")}

    records = convert_rows(read_source(source, hub_id, "test", None), one, "code", result)
    result.outputs = [Output("codecontests.jsonl", "validation", records)]
    return result
