"""HF -> Megatron dist checkpoint (PP2) -> HF (TP2) round trip, and `gdpo convert verify` on the result."""

import pytest
import torch
from safetensors.torch import load_file

from helpers.tiny_models import save_tiny_hf_model

from gdpo_megatron.cli import main
from gdpo_megatron.conversion.megatron_checkpoint import hf_to_megatron, megatron_to_hf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    source = save_tiny_hf_model(root / "qwen2", "qwen2", tie=True, seed=3)
    hf_to_megatron(source, root / "megatron", tp=1, pp=2)
    megatron_to_hf(root / "megatron", root / "back", tp=2, pp=1)  # resharded on load
    return source, root / "back"


def test_megatron_checkpoint_round_trip_is_exact_across_layouts(round_trip):
    source, back = round_trip
    original, restored = load_file(source / "model.safetensors"), load_file(back / "model.safetensors")
    assert sorted(original) == sorted(restored)
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    assert (back / "config.json").read_text() == (source / "config.json").read_text()
    assert (back / "tokenizer.json").is_file()


def test_convert_verify_prints_the_difference_last_and_fails_over_tolerance(round_trip, capsys):
    _, back = round_trip
    # An impossible tolerance: the exit code must be 1 and the last line still the measured number.
    assert main(["convert", "verify", "--hf", str(back), "--tolerance", "1e-12"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert float(lines[-1]) < 1e-4
    assert "greedy next tokens agree: yes" in lines
