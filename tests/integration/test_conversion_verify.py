"""`gdpo convert verify` on a checkpoint without usable tokenizer files, at TP 1 and TP 2.

The checkpoint has tied embeddings, grouped-query attention (4 query / 2 KV heads) and an
odd vocabulary (301: TP 2 pads it), and a tokenizer_config.json whose vocabulary file is
missing, so the tokenizer loads and encodes every text to nothing (this used to reach
megatron's embedding as an empty float tensor).
"""

import json

import pytest
import torch

from helpers.tiny_models import tiny_hf_config

from gdpo_megatron.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import transformers

    out = tmp_path_factory.mktemp("hf") / "llama-no-tokenizer"
    config = tiny_hf_config("llama", tie=True, vocab_size=301, num_heads=4, num_kv_heads=2)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(out, safe_serialization=True)
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return out


@pytest.mark.parametrize("tp", [1, 2])
def test_verify_without_tokenizer_tied_gqa_odd_vocab(checkpoint, tp, capsys):
    assert main(["convert", "verify", "--hf", str(checkpoint), "--tp", str(tp)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"layout: tp={tp} pp=1, 16 positions"
    assert "greedy next tokens agree: yes" in lines
    assert float(lines[-1]) < 1e-4
