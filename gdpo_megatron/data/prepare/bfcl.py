"""BFCL (Berkeley Function Calling Leaderboard) v4 single-turn categories as tool-calling records.

Source: the JSON files the `bfcl-eval` PyPI package ships (`bfcl_eval/data/BFCL_v4_<category>.json`
and `possible_answer/BFCL_v4_<category>.json`), read in place, fully offline; or a local copy
of the same two folders (`--source DIR`). Each question becomes one record:

- `messages`: the project's tool system prompt (plus BFCL's own system message, when the
  question has one) and the user turn;
- `tools`: BFCL's function documents, unchanged;
- `tool_calls`: one ground-truth call list for the project's `tool_correctness` reward. BFCL
  lists several acceptable values per argument; the first is taken, and an optional argument
  whose acceptable values include "" (BFCL: may be omitted) is left out;
- `bfcl`: {"category", "ground_truth"}, BFCL's full possible answers, which the evaluation
  scores with BFCL's own AST checker.

Split by category, not at random: the non-live categories (expert-written) train, the live
categories (user-contributed, BFCL's held-out style) validate, so validation measures transfer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

from gdpo_megatron.rewards.tool_calling import system_prompt

from .common import Conversion, Dropped, Output, SourceError, convert_rows, read_json_rows, stable_hash

TRAIN_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple")
VAL_CATEGORIES = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
VERSION = "v4"


def bfcl_data_dir() -> Path:
    """`bfcl_eval/data` of the installed package (located, not imported: its import pulls API clients)."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("bfcl: the `bfcl-eval` package is not installed (pip install --no-deps bfcl-eval), "
                          "or pass --source with a copy of its data/ folder")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def package_version() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bfcl-eval")
    except PackageNotFoundError:
        return None


def choose_arguments(function: Optional[dict], options: dict[str, list]) -> dict[str, Any]:
    """One concrete argument set from BFCL's acceptable values (see the module docstring)."""
    required = set((function or {}).get("parameters", {}).get("required", []))
    chosen = {}
    for name, values in options.items():
        if not isinstance(values, list) or not values:
            raise Dropped("an argument of the possible answer has no acceptable values")
        given = [v for v in values if v != ""]
        if not given or (name not in required and "" in values):
            continue  # may be omitted (or BFCL accepts only "")
        chosen[name] = concrete(given[0])
    return chosen


def concrete(value: Any) -> Any:
    """Nested dicts of acceptable values ({key: [values]}) resolve like arguments; literal dicts stay."""
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        return {key: concrete(next(v for v in options if v != ""))
                for key, options in value.items() if any(v != "" for v in options) and "" not in options}
    if isinstance(value, list):
        return [concrete(v) for v in value]
    return value


def make_record(question: dict, answer: dict, category: str, where: str) -> dict:
    turns = question.get("question")
    if not isinstance(turns, list) or len(turns) != 1 or not isinstance(turns[0], list):
        raise Dropped("not a single-turn question")
    functions = question.get("function")
    if not isinstance(functions, list) or not functions:
        raise Dropped("no function documents")
    by_name = {f.get("name"): f for f in functions if isinstance(f, dict)}
    calls = []
    for call in answer.get("ground_truth") or []:
        if not isinstance(call, dict) or len(call) != 1:
            raise Dropped("ground-truth call is not {name: arguments}")
        (name, options), = call.items()
        calls.append({"name": name, "arguments": choose_arguments(by_name.get(name), options)})
    if not calls:
        raise Dropped("no ground-truth call")
    system = system_prompt(functions)
    own_system = [m["content"] for m in turns[0] if m.get("role") == "system"]
    if own_system:
        system += "\n\n" + "\n\n".join(own_system)
    messages = [{"role": "system", "content": system}] + [
        {"role": m["role"], "content": m["content"]} for m in turns[0] if m.get("role") != "system"]
    return {"id": question["id"], "messages": messages, "tools": functions, "tool_calls": calls,
            "bfcl": {"category": category, "ground_truth": answer["ground_truth"]}}


def read_category(data_dir: Path, category: str) -> list[tuple[str, dict, Optional[dict]]]:
    questions = data_dir / f"BFCL_{VERSION}_{category}.json"
    answers = data_dir / "possible_answer" / f"BFCL_{VERSION}_{category}.json"
    for path in (questions, answers):
        if not path.is_file():
            raise SourceError(f"{path}: missing (BFCL {VERSION} category {category!r})")
    by_id = {row.get("id"): row for _, row in read_json_rows(answers)}
    return [(where, row, by_id.get(row.get("id"))) for where, row in read_json_rows(questions)]


def convert(source: Optional[str], val_fraction: float, seed: int) -> Conversion:
    """Train on TRAIN_CATEGORIES, validate on VAL_CATEGORIES (by category, so val_fraction is unused;
    the seed orders the validation file)."""
    data_dir = Path(source).expanduser() if source and source != "hf" else bfcl_data_dir()
    result = Conversion(outputs=[], sources=[{"name": f"BFCL {VERSION}", "path": str(data_dir),
                                              "package": "bfcl-eval", "revision": package_version()}])

    def one(item: tuple, where: str) -> dict:
        category, row, answer = item
        if not isinstance(row, dict) or "id" not in row:
            raise Dropped("question without an id")
        if answer is None:
            raise Dropped("no possible answer for this id")
        return make_record(row, answer, category, where)

    for filename, split, categories in (("train.jsonl", "train", TRAIN_CATEGORIES),
                                        ("val.jsonl", "validation", VAL_CATEGORIES)):
        rows = [(where, (category, row, answer)) for category in categories
                for where, row, answer in read_category(data_dir, category)]
        records = convert_rows(rows, one, "tool_calling", result)
        if split == "validation":
            # Seeded order, so that any prefix (trainer.validation.num_prompts, --limit) mixes categories.
            records.sort(key=lambda r: stable_hash(f"{seed}:{r['id']}"))
        result.outputs.append(Output(filename, split, records))
    return result
