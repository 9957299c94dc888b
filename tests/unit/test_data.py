"""Datasets, record validation, templates, the resumable sampler and the synthetic task."""

import json

import pytest

from gdpo_megatron.config.data import DataConfig
from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.schema import build
from gdpo_megatron.data import PromptSampler, RecordError, load_prompt_dataset, read_records, render_prompt
from gdpo_megatron.data import synthetic
from gdpo_megatron.rewards import REWARDS


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ---- sampler -------------------------------------------------------------------------------

def test_sampler_resume_is_exact():
    data = [{"id": str(i)} for i in range(10)]
    reference = PromptSampler(data, batch_size=4, seed=7)
    batches = [[r["id"] for r in reference.next_batch()] for _ in range(8)]  # 3.2 epochs
    for k in range(8):
        sampler = PromptSampler(data, batch_size=4, seed=7)
        for _ in range(k):
            sampler.next_batch()
        state = json.loads(json.dumps(sampler.state_dict()))  # survives a JSON checkpoint
        resumed = PromptSampler(data, batch_size=4, seed=999)
        resumed.load_state_dict(state)
        assert [[r["id"] for r in resumed.next_batch()] for _ in range(8 - k)] == batches[k:]


def test_sampler_epochs_are_permutations_and_seeded():
    data = [{"id": str(i)} for i in range(10)]
    sampler = PromptSampler(data, batch_size=5, seed=3)
    epoch0 = [r["id"] for r in sampler.next_batch() + sampler.next_batch()]
    epoch1 = [r["id"] for r in sampler.next_batch() + sampler.next_batch()]
    assert sorted(epoch0) == sorted(epoch1) == sorted(str(i) for i in range(10))
    assert epoch0 != epoch1  # a new permutation each epoch
    assert sampler.state_dict()["epoch"] == 1 and sampler.state_dict()["position"] == 10
    other = PromptSampler(data, batch_size=5, seed=4)
    assert [r["id"] for r in other.next_batch() + other.next_batch()] != epoch0
    plain = PromptSampler(data, batch_size=3, seed=3, shuffle=False)
    assert [r["id"] for r in plain.next_batch() + plain.next_batch() + plain.next_batch() + plain.next_batch()] == \
        [str(i) for i in range(10)] + ["0", "1"]


def test_completed_passes_count_a_pass_that_just_ended():
    from gdpo_megatron.data.sampler import completed_passes

    sampler = PromptSampler([{"i": i} for i in range(6)], 4, seed=0)
    passes = []
    for _ in range(4):
        sampler.next_batch()
        passes.append(completed_passes(sampler.state_dict()))
    # prompts drawn: 4, 8, 12 (two passes exactly, epoch still 1), 16
    assert passes == [0, 1, 2, 2]
    assert sampler.epoch == 2


def test_sampler_refuses_a_different_dataset():
    sampler = PromptSampler([{"id": "a"}] * 4, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="4 records, this dataset has 5"):
        PromptSampler([{"id": "a"}] * 5, batch_size=2, seed=0).load_state_dict(sampler.state_dict())


# ---- files and records -------------------------------------------------------------------------

def test_jsonl_records_and_bad_lines(tmp_path):
    good = write_lines(tmp_path / "math.jsonl", [json.dumps({"id": "q1", "prompt": "1+1?", "answer": "2"}),
                                                 "", json.dumps({"prompt": "2+2?", "answer": 4})])
    records = read_records(good, "math")
    assert [r["id"] for r in records] == ["q1", "math-2"]
    assert records[0]["messages"] == [{"role": "user", "content": "1+1?"}] and records[1]["answer"] == 4

    cases = [
        ('{"prompt": "x", "answer": 1', "bad.jsonl:2: not valid JSON"),
        ('{"prompt": "x"}', "bad.jsonl:2 (id None)".replace(" (id None)", "") + ": a math record needs 'answer'"),
        ('{"id": "z", "messages": [{"role": "user"}], "answer": 1}', "bad.jsonl:2 (id 'z'): messages[0]"),
        ('{"id": "q1", "prompt": "y", "answer": 1}', "bad.jsonl:2: duplicate id 'q1' (first at"),
        ('[1, 2]', "bad.jsonl:2: a record must be a JSON object"),
    ]
    for line, message in cases:
        bad = write_lines(tmp_path / "bad.jsonl", [json.dumps({"id": "q1", "prompt": "ok", "answer": 1}), line])
        with pytest.raises(RecordError) as err:
            read_records(bad, "math")
        assert message in str(err.value), (line, str(err.value))


def test_task_schemas(tmp_path):
    code = write_lines(tmp_path / "code.jsonl", [json.dumps({"id": "c", "prompt": "p", "tests": {"style": "stdin", "cases": []}})])
    with pytest.raises(RecordError, match=r"code.jsonl:1 \(id 'c'\): tests.cases must be a non-empty list"):
        read_records(code, "code")
    tools = [{"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}]
    tc = write_lines(tmp_path / "tc.jsonl", [
        json.dumps({"id": "t", "prompt": "call f", "tools": tools, "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}),
        json.dumps({"id": "u", "prompt": "call f", "tools": tools, "tool_calls": [{"arguments": {}}]})])
    with pytest.raises(RecordError, match=r"tc.jsonl:2 \(id 'u'\): tool_calls\[0\]"):
        read_records(tc, "tool_calling")
    ok = write_lines(tmp_path / "tc_ok.jsonl", [json.dumps({"id": "t", "prompt": "call f", "tools": tools, "tool_calls": []})])
    (record,) = read_records(ok, "tool_calling")
    assert record["messages"][0]["role"] == "system" and '"name": "f"' in record["messages"][0]["content"]


def test_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "p1", "prompt": "What?", "answer": "1"}, {"id": "p2", "prompt": "", "answer": "2"}]
    pq.write_table(pa.Table.from_pylist(rows[:1]), tmp_path / "ok.parquet")
    assert read_records(str(tmp_path / "ok.parquet"), "math")[0]["answer"] == "1"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(RecordError, match=r"bad.parquet:row 2 \(id 'p2'\): needs 'messages'"):
        read_records(str(tmp_path / "bad.parquet"), "math")


def test_load_prompt_dataset_from_files_and_config_errors(tmp_path):
    path = write_lines(tmp_path / "train.jsonl", [json.dumps({"id": str(i), "prompt": "x" * (i * 10), "answer": 1})
                                                  for i in range(1, 4)])
    config = build(DataConfig, {"task": "math", "train_path": path, "max_prompt_tokens": 40})
    tokenizer = synthetic.build_tokenizer()
    dataset = load_prompt_dataset(config, "train", seed=0, tokenizer=tokenizer)
    lengths = [len(tokenizer(render_prompt(r, tokenizer))["input_ids"]) for r in read_records(path, "math")]
    assert dataset.dropped_too_long == sum(n > 40 for n in lengths) and len(dataset) == sum(n <= 40 for n in lengths)
    with pytest.raises(ConfigError, match="train_path: task 'math' needs a data file"):
        build(DataConfig, {"task": "math"})
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.recipe_checks import check_recipe
    with pytest.raises(ConfigError, match='data.args.max_operant: unknown synthetic option .max_operant. '
                                          '\\(did you mean "max_operand"'):
        check_recipe(RecipeConfig(data=build(DataConfig, {"args": {"max_operant": 5}})))
    with pytest.raises(ConfigError, match="task: unknown task 'tool_call'"):
        build(DataConfig, {"task": "tool_call", "train_path": path})


# ---- templates ----------------------------------------------------------------------------------

def test_plain_and_chat_templates():
    record = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert render_prompt(record, None) == "System: Be brief.\n\nUser: Hi\n\nAssistant:"
    tokenizer = synthetic.build_tokenizer()
    assert render_prompt(record, tokenizer) == "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"


# ---- synthetic task -----------------------------------------------------------------------------

def test_synthetic_problems_are_seeded_and_splits_disjoint():
    train = synthetic.generate_problems("train", seed=5, num_train=3000)
    again = synthetic.generate_problems("train", seed=5, num_train=3000)
    val = synthetic.generate_problems("val", seed=5, num_val=300)
    assert train == again and train != synthetic.generate_problems("train", seed=6, num_train=3000)
    key = lambda r: (r["a"], r["op"], r["b"])  # noqa: E731
    assert not {key(r) for r in train} & {key(r) for r in val}
    for r in train[:200] + val[:200]:
        assert int(r["answer"]) == eval(f"{r['a']}{r['op']}{r['b']}")  # noqa: S307 - our own generated arithmetic
        assert r["prompt"] == f"What is {r['a']}{r['op']}{r['b']}?"
    assert {r["op"] for r in train} == {"+", "-"}


def test_tokenizer_round_trip_and_saved_files(tmp_path):
    from transformers import AutoTokenizer

    synthetic.build_tokenizer(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "<|user|>What is 17+25?\n<|assistant|>17+25=42 <answer>42</answer>"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # tags survive skip_special_tokens
    assert len(tokenizer("<answer>42</answer>", add_special_tokens=False)["input_ids"]) == 4
    assert len(tokenizer) < 300 and tokenizer.eos_token == "</s>" and tokenizer.pad_token_id == 0
    assert tokenizer.unk_token_id not in ids


def test_warmstart_mix_has_the_intended_reward_vectors():
    tokenizer = synthetic.build_tokenizer()
    examples = synthetic.warmstart_examples(400, seed=1)
    kinds = {e["kind"] for e in examples}
    assert kinds == set(synthetic.WARMSTART_MIX)
    expected = {"direct": (1, 1, 1), "worked": (1, 1, 0), "off_by_one": (0, 1, 1), "trailing": (1, 0, 1), "untagged": (0, 0, 1)}
    for e in examples:
        tokens = len(tokenizer(e["response"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
        got = tuple(REWARDS.get(f"synthetic_{n}")(e["record"], e["response"], tokens) for n in ("correct", "format", "length"))
        assert got == expected[e["kind"]], e
