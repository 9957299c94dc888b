"""`gdpo convert verify` refuses a checkpoint it cannot compare with one line naming it (no
process is started for what the directory itself shows), and picks token ids a model can embed
even when its tokenizer files are missing or unusable."""

import json

import pytest
import torch

from helpers.tiny_models import tiny_hf_config

from gdpo_megatron.cli import main
from gdpo_megatron.conversion.verify import default_tokens


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Config and weights only (no tokenizer files), tied embeddings, GQA, odd vocabulary."""
    import transformers

    out = tmp_path_factory.mktemp("hf") / "llama"
    config = tiny_hf_config("llama", tie=True, vocab_size=301, num_heads=4, num_kv_heads=2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    return out


def _refusal(capsys, hf_dir, *extra):
    assert main(["convert", "verify", "--hf", str(hf_dir), *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gdpo convert verify: ") and "Traceback" not in captured.err
    assert str(hf_dir) in lines[0]
    return lines[0]


def test_one_line_refusals(tmp_path, checkpoint, capsys):
    assert "not a directory" in _refusal(capsys, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json" in _refusal(capsys, empty)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert "not valid JSON" in _refusal(capsys, broken)
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10}))
    assert "model_type 'gpt2' is not supported" in _refusal(capsys, other)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((checkpoint / "config.json").read_text())
    assert "only safetensors checkpoints are supported" in _refusal(capsys, no_weights)
    assert "num_attention_heads=4 is not divisible by policy.parallel.tensor=3" in _refusal(capsys, checkpoint, "--tp", "3")


def test_token_ids_without_a_usable_tokenizer(tmp_path, checkpoint):
    ids = default_tokens(checkpoint)
    assert ids.dtype == torch.long and ids.shape == (1, 16) and int(ids.max()) < 301
    # a tokenizer_config.json naming a slow tokenizer whose vocabulary file is missing loads
    # and then encodes every text to nothing; the ids must still be usable
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "model.safetensors"):
        (partial / name).write_bytes((checkpoint / name).read_bytes())
    (partial / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    ids = default_tokens(partial)
    assert ids.dtype == torch.long and ids.shape == (1, 16) and int(ids.min()) >= 0 and int(ids.max()) < 301
