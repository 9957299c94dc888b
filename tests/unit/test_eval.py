"""Evaluation metrics and `gdpo eval` on small local JSONL files with fixed responses."""

import json

import pytest

from gdpo_megatron.cli import main
from gdpo_megatron.evaluation import evaluate_responses

SYNTH = [{"id": "a", "prompt": "What is 17+25?", "answer": "42"}, {"id": "b", "prompt": "What is 2+3?", "answer": "5"}]
# (response, tokens): r1 -> correct [1, 1], format [1, 1], over 8 tokens [0, 1]; r2 -> correct [0, 0], format [1, 0]
SYNTH_RESPONSES = [("a", "<answer>42</answer>", 5), ("a", "17+25=42 <answer>42</answer>", 14),
                   ("b", "<answer>4</answer>", 5), ("b", "5", 2)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_synthetic_two_samples(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", SYNTH)
    responses = write_jsonl(tmp_path / "responses.jsonl", [{"id": i, "response": r, "num_tokens": t} for i, r, t in SYNTH_RESPONSES])
    out = tmp_path / "metrics.json"
    assert main(["eval", "--task", "synthetic", "--data", data, "--responses", responses, "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["accuracy"] == pytest.approx((1 + 0) / 2)
    assert metrics["format_rate"] == pytest.approx((1 + 0.5) / 2)
    assert metrics["exceed"] == pytest.approx((0.5 + 0) / 2)
    assert metrics["num_samples"] == 4 and metrics["samples_per_prompt"] == [2] and metrics["max_tokens"] == 8
    table = capsys.readouterr().out
    assert "accuracy" in table and "50.00%" in table and "75.00%" in table

    assert main(["eval", "--task", "synthetic", "--data", data, "--responses", responses, "--samples", "1",
                 "--out", str(out)]) == 0
    first = json.loads(out.read_text())
    assert (first["accuracy"], first["format_rate"], first["exceed"]) == (0.5, 1.0, 0.0)


def test_cli_reports_bad_inputs(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", SYNTH)
    unknown = write_jsonl(tmp_path / "r1.jsonl", [{"id": "a", "response": "x"}, {"id": "zz", "response": "y"}])
    assert main(["eval", "--task", "synthetic", "--data", data, "--responses", unknown]) == 2
    assert "r1.jsonl:2: id 'zz' is not in the data file" in capsys.readouterr().err
    missing = write_jsonl(tmp_path / "r2.jsonl", [{"id": "a", "response": "x"}])
    assert main(["eval", "--task", "synthetic", "--data", data, "--responses", missing]) == 2
    assert "no responses for id(s) 'b'" in capsys.readouterr().err
    uneven = write_jsonl(tmp_path / "r3.jsonl", [{"id": "a", "responses": ["x", "y"]}, {"id": "b", "response": "z"}])
    assert main(["eval", "--task", "synthetic", "--data", data, "--responses", uneven, "--samples", "2"]) == 2
    assert "--samples 2 but id(s) 'b' have fewer" in capsys.readouterr().err


def test_math_words_and_exceed(tmp_path):
    records = [{"id": "m1", "answer": "\\frac12"}, {"id": "m2", "answer": "3"}]
    responses = [["so \\boxed{0.5}", "\\boxed{2}"], ["three words \\boxed{3}", "\\boxed{3}"]]
    metrics = evaluate_responses("math", records, responses, max_tokens=2)
    assert metrics["accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["exceed"] == pytest.approx((0 + 0.5) / 2)  # words: "three words \boxed{3}" has 3 > 2


def test_code_pass_rate_and_bug_ratio():
    record = {"id": "c", "tests": {"style": "stdin", "cases": [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "4"}]}}
    samples = ["a, b = map(int, input().split())\nprint(a + b)",  # pass 1, no bug
               "a, b = map(int, input().split())\nprint(a * b)",  # pass 1/2 (2*2 = 4), no bug
               "print(undefined_name)"]  # pass 0, bug
    metrics = evaluate_responses("code", [record], [samples], num_tokens=[[10, 10, 5000]], num_workers=3,
                                 reward_args={"code_pass": {"timeout_s": 3.0}, "code_no_bug": {"timeout_s": 3.0}})
    assert metrics["pass_rate"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["bug_ratio"] == pytest.approx(1 / 3)
    assert metrics["exceed"] == pytest.approx(1 / 3)


def test_tool_calling_accuracy_and_format():
    record = {"id": "t", "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}  # S_max = 3
    exact = '<think>x</think>\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'
    wrong_value = '<think>x</think>\n<tool_call>\n{"name": "f", "arguments": {"a": 2}}\n</tool_call>'
    metrics = evaluate_responses("tool_calling", [record], [[exact, wrong_value, "no idea"]])
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["mean_tool_correctness"] == pytest.approx((3 + (6 * 2 / 3 - 3) - 3) / 3)
    assert metrics["format_rate"] == pytest.approx(2 / 3)


def test_pass_at_k_and_mean_length():
    records = [{"id": "a", "prompt": "17+25?", "answer": "42", "task": "synthetic"},
               {"id": "b", "prompt": "2+3?", "answer": "5", "task": "synthetic"}]
    # a: one correct of two samples; b: none correct.
    metrics = evaluate_responses("synthetic", records, [["<answer>42</answer>", "<answer>41</answer>"],
                                                        ["<answer>4</answer>", "<answer>6</answer>"]],
                                 num_tokens=[[5, 7], [5, 3]])
    assert metrics["pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert metrics["pass@2"] == pytest.approx((1.0 + 0.0) / 2)
    assert metrics["mean_length"] == pytest.approx((6 + 4) / 2)


def test_model_and_responses_are_exclusive(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", SYNTH)
    with pytest.raises(SystemExit):
        main(["eval", "--task", "synthetic", "--data", data, "--responses", data, "--model", str(tmp_path)])
    assert main(["eval", "--task", "synthetic", "--data", data, "--model", str(tmp_path)]) == 2
    assert "neither an HF checkpoint directory (config.json) nor a run directory" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert main(["eval", "--task", "synthetic", "--data", data, "--model", str(tmp_path / "run")]) == 2
    assert "run directory without final_model/" in capsys.readouterr().err


REFUSED_CODE = [
    {"id": "ok", "prompt": "Read two integers, print their sum.",
     "tests": {"style": "stdin", "cases": [{"input": "1 2", "output": "3"}, {"input": "2 2", "output": "4"}]}},
    # Asserts that never call the program: judging them would mean trusting the program's own output.
    {"id": "never-calls", "prompt": "Write add(a, b).",
     "tests": {"style": "function", "asserts": ["assert 1 + 1 == 2"]}},
    # A HumanEval-form check that needs a helper nobody defined (only tests.context is trusted).
    {"id": "needs-helper", "prompt": "Write add(a, b).",
     "tests": {"style": "function", "entry_point": "add",
               "test": "def check(candidate):\n    assert helper(candidate(1, 2)) == 3\n"}},
]


def test_refused_code_tests_are_counted_and_named_not_raised():
    good = "a, b = map(int, input().split())\nprint(a + b)"
    metrics = evaluate_responses("code", REFUSED_CODE, [[good, "print(0)"], [good], [good]],
                                 num_tokens=[[10, 3], [10], [10]],
                                 reward_args={"code_pass": {"timeout_s": 3.0}, "code_no_bug": {"timeout_s": 3.0}})
    assert metrics["refused_samples"] == 2
    assert list(metrics["refused_records"]) == ["never-calls", "needs-helper"]
    assert "never call a function of the program" in metrics["refused_records"]["never-calls"]
    assert metrics["refused_records"]["needs-helper"].startswith("code_pass: record 'needs-helper': tests.test uses helper")
    # The means cover the scored record only: pass rates 1 and 0 -> 0.5; no bug in either.
    assert metrics["pass_rate"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["bug_ratio"] == pytest.approx(0.0)
    assert metrics["num_samples"] == 4 and metrics["mean_length"] == pytest.approx((6.5 + 10 + 10) / 3)


def test_cli_reports_refused_records(tmp_path, capsys):
    data = write_jsonl(tmp_path / "code.jsonl", REFUSED_CODE)
    responses = write_jsonl(tmp_path / "responses.jsonl",
                            [{"id": r["id"], "response": "print(3)", "num_tokens": 3} for r in REFUSED_CODE])
    out = tmp_path / "metrics.json"
    assert main(["eval", "--task", "code", "--data", data, "--responses", responses, "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["refused_samples"] == 2 and sorted(metrics["refused_records"]) == ["needs-helper", "never-calls"]
    assert metrics["pass_rate"] == pytest.approx(0.5)  # "print(3)" passes 1 + 2 = 3, not 2 + 2 = 4
    table = capsys.readouterr().out
    assert "refused never-calls" in table and "refused_samples" in table


def test_nothing_refused_reports_zero():
    metrics = evaluate_responses("tool_calling", [{"id": "t", "tool_calls": []}], ["no call"])
    assert metrics["refused_samples"] == 0 and metrics["refused_records"] == {}
