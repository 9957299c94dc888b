"""`gdpo data prepare`: every converter on a fixture in its upstream schema, BFCL on the real
BFCL v4 files of the installed bfcl-eval package, and BFCL's own AST checker."""

import json
from pathlib import Path

import pytest

from gdpo_megatron.cli import main
from gdpo_megatron.data import read_records
from gdpo_megatron.data.prepare import DATASETS, command_for, prepare
from gdpo_megatron.data.prepare.common import is_validation
from gdpo_megatron.rewards import REWARDS
from gdpo_megatron.rewards.tool_calling import render_calls

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "datasets"


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run_prepare(name, out, source, **kwargs):
    manifest = json.loads(prepare(name, out, source=source, **kwargs).read_text())
    files = {f: read_jsonl(Path(out) / f) for f in manifest["files"]}
    for filename, records in files.items():
        assert manifest["files"][filename]["records"] == len(records)
        task = DATASETS.get(name).task
        read_records(str(Path(out) / filename), task)  # the training loader accepts every record
    return manifest, files


def test_every_recipe_data_path_is_written_by_a_converter(repo_root):
    import yaml

    from gdpo_megatron.config import load_recipe
    from gdpo_megatron.recipe_index import recipe_files

    checked = 0
    for recipe_file in recipe_files(repo_root / "recipes"):
        recipe = load_recipe(recipe_file)
        # The recipe, or the defaults file it inherits its data section from, names the command.
        text, pending = "", [recipe_file]
        while pending:
            current = pending.pop()
            text += current.read_text()
            parents = (yaml.safe_load(current.read_text()) or {}).get("defaults") or []
            pending += [(current.parent / p).resolve() for p in ([parents] if isinstance(parents, str) else parents)]
        for path in (recipe.data.train_path, recipe.data.val_path):
            if path is None:
                continue
            command = command_for(path)
            assert command is not None, f"{recipe_file}: nothing writes {path}"
            assert f"# Data: {command}" in text or f"&& {command}" in text, f"{recipe_file}: header lacks `{command}`"
            name, out = command.split()[3], command.split()[5]
            assert Path(out) / Path(path).name == Path(path) and Path(path).name in DATASETS.get(name).files
            checked += 1
    assert checked >= 20


def test_deepscaler_fixture_split_ids_and_manifest(tmp_path):
    manifest, files = run_prepare("deepscaler", tmp_path, str(FIXTURES / "deepscaler.json"), val_fraction=0.3, seed=1)
    train, val = files["deepscaler.jsonl"], files["deepscaler-val.jsonl"]
    assert len(train) + len(val) == 7 and val and train
    assert manifest["rows_read"] == 8
    assert manifest["dropped"] == {"missing 'answer'": {"count": 1, "examples": [f"{FIXTURES / 'deepscaler.json'}:item 6"]}}
    assert {r["answer"] for r in train + val} == {"3", "\\frac{3}{4}", "4", "5", "9", "42"}
    # The split is the seeded id hash, the same on every run and machine.
    assert all(is_validation(r["id"], 0.3, 1) for r in val) and not any(is_validation(r["id"], 0.3, 1) for r in train)
    again_manifest, again = run_prepare("deepscaler", tmp_path / "again", str(FIXTURES / "deepscaler.json"),
                                        val_fraction=0.3, seed=1)
    assert again == files and again_manifest["files"] == manifest["files"]
    other = run_prepare("deepscaler", tmp_path / "seed2", str(FIXTURES / "deepscaler.json"), val_fraction=0.3, seed=2)[1]
    assert {r["id"] for r in other["deepscaler.jsonl"] + other["deepscaler-val.jsonl"]} == {r["id"] for r in train + val}
    assert train[0]["prompt"].endswith("within \\boxed{}.")
    # Math reward on a correct boxed answer: the records carry what the reward needs.
    record = next(r for r in train + val if r["answer"] == "42")
    assert REWARDS.get("math_correctness")(record, "so \\boxed{42}", 3) == 1.0


def test_aime_and_math500_ids(tmp_path):
    manifest, files = run_prepare("aime24", tmp_path, str(FIXTURES / "aime_2024.jsonl"))
    assert [r["id"] for r in files["aime24.jsonl"]] == ["aime24-60", "aime24-61"]
    assert list(manifest["dropped"]) == ["missing 'answer'"]
    manifest, files = run_prepare("math500", tmp_path, str(FIXTURES / "math500.jsonl"))
    assert [r["id"] for r in files["math500.jsonl"]] == ["math500-test-precalculus-807", "math500-test-prealgebra-1"]
    assert manifest["dropped"]["missing 'unique_id'"]["count"] == 1


def test_eurus2_code_and_codecontests(tmp_path):
    manifest, files = run_prepare("eurus2-code", tmp_path, str(FIXTURES / "eurus2.jsonl"), val_fraction=0.0)
    records = {r["id"]: r for r in files["eurus2_code.jsonl"]}
    assert sorted(records) == ["eurus2-apps-1", "eurus2-codeforces-4", "eurus2-taco-0"]
    assert records["eurus2-taco-0"]["tests"] == {"style": "stdin", "cases": [{"input": "1 2\n", "output": "3\n"},
                                                                              {"input": "5 7\n", "output": "12\n"}]}
    assert records["eurus2-apps-1"]["tests"] == {"style": "function", "asserts": ["assert add(1, 2) == 3",
                                                                                  "assert add(3, 4) == 7"]}
    assert {k: v["count"] for k, v in manifest["dropped"].items()} == {
        "not a code problem (ability != 'code')": 1,
        "ground truth needs equally long non-empty 'inputs' and 'outputs'": 1}
    manifest, files = run_prepare("codecontests", tmp_path, str(FIXTURES / "code_contests.jsonl"))
    (record,) = files["codecontests.jsonl"]
    assert record["id"] == "codecontests-1548_A"
    assert record["tests"]["cases"] == [{"input": "1 2\n", "output": "3\n"}, {"input": "10 20\n", "output": "30\n"}]
    assert list(manifest["dropped"]) == ["no public or private tests"]


def test_toolrl_mix_from_toolace_hammer_xlam(tmp_path):
    source = ",".join(f"{n}={FIXTURES / f}" for n, f in (("toolace", "toolace.json"), ("hammer", "hammer.jsonl"),
                                                        ("xlam", "xlam.jsonl")))
    manifest, files = run_prepare("toolrl", tmp_path, source, val_fraction=0.0)
    records = files["train.jsonl"]
    by_source = {}
    for r in records:
        by_source.setdefault(r["source"], []).append(r)
    assert {k: len(v) for k, v in by_source.items()} == {"toolace": 3, "hammer": 2, "xlam": 2}
    calls = sorted(json.dumps(r["tool_calls"], sort_keys=True) for r in by_source["toolace"])
    assert calls == sorted([
        "[]",
        json.dumps([{"arguments": {"city": "Paris", "unit": "celsius"}, "name": "get_weather"}], sort_keys=True),
        json.dumps([{"arguments": {"symbol": "AAPL"}, "name": "stock.price"},
                    {"arguments": {"symbol": "MSFT"}, "name": "stock.price"}], sort_keys=True)])
    irrelevant = [r for r in records if not r["tool_calls"]]
    assert all(r["expects_response"] for r in irrelevant) and len(irrelevant) == 2
    xlam = next(r for r in by_source["xlam"] if r["id"] == "xlam-2")
    assert xlam["tools"][0]["parameters"]["required"] == ["amount", "from", "to"]
    giveaways = next(r for r in by_source["xlam"] if r["id"] == "xlam-1")
    assert giveaways["tools"][0]["parameters"]["required"] == []  # a default makes the argument optional
    assert {k: v["count"] for k, v in manifest["dropped"].items()} == {
        "no JSON list of tools in 'system'": 1, "'answers' is not valid JSON": 1, "missing 'query'": 1}
    # The reference output of every record scores the top of both rewards.
    for r in records:
        reference = render_calls(r["tool_calls"], think="ok", response="done" if not r["tool_calls"] else None)
        assert REWARDS.get("format")(r, reference, 10) == 1.0
        assert REWARDS.get("tool_correctness")(r, reference, 10) == (3.0 if r["tool_calls"] else 0.0)
    # The mix takes at most `take` records per source, chosen by the seeded hash.
    from gdpo_megatron.data.prepare import toolrl

    small = toolrl.convert(source, 0.0, 0, mix={"toolace": 1, "hammer": 1, "xlam": 1})
    assert len(small.outputs[0].records) == 3


def test_toolrl_own_mix_file(tmp_path):
    """ToolRL's rlla_rl.json (the paper's 4k mix): its prompt kept, its reference turns scoring the top."""
    source = FIXTURES / "toolrl_rlla_rl.json"
    manifest, files = run_prepare("toolrl", tmp_path, str(source), val_fraction=0.0)
    records = files["train.jsonl"]
    assert len(records) == 5 and manifest["rows_read"] == 7
    assert {k: v["count"] for k, v in manifest["dropped"].items()} == {
        "a reference call line in 'output' is not JSON": 1, "missing 'instruction', 'input' or 'output'": 1}
    rows = json.loads(source.read_text())
    by_input = {r["messages"][1]["content"]: r for r in records}
    for row in rows[:5]:
        record = by_input[row["input"]]
        assert record["messages"][0] == {"role": "system", "content": row["instruction"]}
        # ToolRL's own reference turn is what the two rewards score highest.
        assert REWARDS.get("format")(record, row["output"], 10) == 1.0
        assert REWARDS.get("tool_correctness")(record, row["output"], 10) == (3.0 if record["tool_calls"] else 0.0)
    oslo = by_input[rows[0]["input"]]
    assert oslo["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert [t["parameters"]["required"] for t in oslo["tools"]] == [["city"], []]  # "" marks no default
    masked = by_input[rows[2]["input"]]
    assert masked["tool_calls"] == [{"name": "Qx7.mK2", "arguments": {"a9.Z": 7, "Kp3": "history"}}]
    assert by_input[rows[3]["input"]]["tool_calls"] == [] and by_input[rows[3]["input"]]["expects_response"]
    both = by_input[rows[4]["input"]]  # a call and a response in one turn
    assert both["tool_calls"] and both["expects_response"]
    again = tmp_path / "again"
    run_prepare("toolrl", again, str(source), val_fraction=0.0)
    assert (again / "train.jsonl").read_bytes() == (tmp_path / "train.jsonl").read_bytes()  # stable ids and order


def test_bad_source_is_named(tmp_path, capsys):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"problem": "x", "answer": "1"}\n{"problem": \n')
    assert main(["data", "prepare", "deepscaler", "--out", str(tmp_path / "o"), "--source", str(bad)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert main(["data", "prepare", "aime24", "--out", str(tmp_path / "o"), "--source", str(tmp_path / "nope")]) == 2
    assert "no such file or directory (the local copy of HuggingFaceH4/aime_2024)" in capsys.readouterr().err
    assert main(["data", "prepare", "toolrl", "--out", str(tmp_path / "o"), "--source", "xlam=a"]) == 2
    assert "missing: toolace, hammer" in capsys.readouterr().err
    assert main(["data", "prepare", "toolrl", "--out", str(tmp_path / "o"), "--source", str(tmp_path / "rlla.json")]) == 2
    assert "no such file or directory (the local copy of ToolRL's dataset/rlla_4k_raw/rlla_rl.json)" in capsys.readouterr().err


def test_missing_and_bad_data_files_name_the_command(tmp_path, monkeypatch):
    from gdpo_megatron.data import RecordError

    monkeypatch.chdir(tmp_path)  # the recipes' relative paths, resolved in an empty directory
    with pytest.raises(RecordError, match=r"^data/bfcl/val\.jsonl: no such data file \(this file is written by "
                                          r"`gdpo data prepare bfcl --out data/bfcl`\)$"):
        read_records("data/bfcl/val.jsonl", "tool_calling")
    Path("data/math").mkdir(parents=True)
    Path("data/math/aime24.jsonl").write_text('{"id": "a", "prompt": "p"}\n')
    with pytest.raises(RecordError, match=r"^data/math/aime24\.jsonl:1 \(id 'a'\): a math record needs 'answer' "
                                          r"\(this file is written by `gdpo data prepare aime24 --out data/math`\)$"):
        read_records("data/math/aime24.jsonl", "math")


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("toolrl", "bfcl", "deepscaler", "aime24", "math500", "eurus2-code", "codecontests"):
        assert name in out


# ---- BFCL on the data shipped in bfcl-eval ---------------------------------------------------

@pytest.fixture(scope="module")
def bfcl_dir(tmp_path_factory):
    pytest.importorskip("bfcl_eval")  # located only; its API clients are not needed
    out = tmp_path_factory.mktemp("bfcl")
    prepare("bfcl", out)
    return out


def test_bfcl_categories_counts_and_schema(bfcl_dir):
    manifest = json.loads((bfcl_dir / "bfcl.manifest.json").read_text())
    train, val = read_jsonl(bfcl_dir / "train.jsonl"), read_jsonl(bfcl_dir / "val.jsonl")
    # BFCL v4 (bfcl-eval 2026.3.23): 400 simple_python + 200 multiple + 200 parallel + 200 parallel_multiple.
    count = lambda records: {c: sum(r["bfcl"]["category"] == c for r in records) for c in {r["bfcl"]["category"] for r in records}}
    assert count(train) == {"simple_python": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200}
    assert manifest["rows_read"] == 1000 + 258 + 1053 + 16 + 24
    assert sum(count(val).values()) + sum(d["count"] for d in manifest["dropped"].values()) == 258 + 1053 + 16 + 24
    assert set(count(val)) == {"live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"}
    first = train[0]
    assert first["id"] == "simple_python_0"
    assert first["tool_calls"] == [{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}]
    assert first["messages"][0]["role"] == "system" and "calculate_triangle_area" in first["messages"][0]["content"]
    assert len({r["id"] for r in train + val}) == len(train) + len(val)
    assert manifest["sources"][0]["package"] == "bfcl-eval" and manifest["sources"][0]["revision"]


def test_bfcl_checker_accepts_reference_and_rejects_wrong_calls(bfcl_dir):
    from gdpo_megatron.evaluation.bfcl import bfcl_correct, bfcl_metrics

    records = read_jsonl(bfcl_dir / "train.jsonl")[::50] + read_jsonl(bfcl_dir / "val.jsonl")[::50]
    references = [render_calls(r["tool_calls"]) for r in records]
    verdicts = [bfcl_correct(r, text) for r, text in zip(records, references)]
    assert sum(verdicts) >= len(records) - 1  # the chosen ground truth passes BFCL's own checker
    first = read_jsonl(bfcl_dir / "train.jsonl")[0]
    wrong_value = render_calls([{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 6}}])
    wrong_name = render_calls([{"name": "triangle_area", "arguments": {"base": 10, "height": 5}}])
    optional_given = render_calls([{"name": "calculate_triangle_area",
                                    "arguments": {"base": 10, "height": 5, "unit": "units"}}])
    assert bfcl_correct(first, render_calls(first["tool_calls"]))
    assert bfcl_correct(first, optional_given)
    assert not bfcl_correct(first, wrong_value) and not bfcl_correct(first, wrong_name)
    assert not bfcl_correct(first, "no tool call at all")
    metrics = bfcl_metrics([first, first], [[render_calls(first["tool_calls"]), wrong_value], [wrong_name]])
    assert metrics == {"bfcl_accuracy": 0.25, "bfcl_accuracy/simple_python": 0.25}


def test_warmstart_demonstrations_score_the_top_of_both_rewards(bfcl_dir):
    from gdpo_megatron.data.demonstrations import tool_calling_demonstrations

    records = read_records(str(bfcl_dir / "train.jsonl"), "tool_calling")
    demos = tool_calling_demonstrations(records, 50, seed=3)
    assert len(demos) == 50 and len({r["id"] for r, _ in demos}) == 50
    assert [r["id"] for r, _ in demos] == [r["id"] for r, _ in tool_calling_demonstrations(records, 50, seed=3)]
    assert [r["id"] for r, _ in demos] != [r["id"] for r, _ in tool_calling_demonstrations(records, 50, seed=4)]
    for record, response in demos:
        assert REWARDS.get("format")(record, response, 50) == 1.0
        assert REWARDS.get("tool_correctness")(record, response, 50) == 3.0
    irrelevant = {"id": "x", "messages": [{"role": "user", "content": "hi"}], "tools": [], "tool_calls": []}
    assert REWARDS.get("format")(irrelevant, tool_calling_demonstrations([irrelevant], 1, 0)[0][1], 10) == 1.0
