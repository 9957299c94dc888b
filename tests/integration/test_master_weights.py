"""After loading an HF checkpoint, the optimizer's fp32 master weights are the checkpoint's values.

bf16 policy (Float16Module, mcore DDP) from a bf16 HF checkpoint, with the distributed and
the plain mixed-precision optimizer: every master tensor must equal the parameter of an fp32
policy loaded from the same checkpoint (which holds the HF values exactly). The last test
shows the failure this ordering prevents: an optimizer built before the load keeps stale
masters. FP8 parameters (their master copy comes from Transformer Engine's saved
initialization value) are checked by the GPU suite (tests/gpu/).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers.tiny_models import save_tiny_hf_model  # noqa: E402

from gdpo_megatron.config.recipe import RecipeConfig  # noqa: E402
from gdpo_megatron.config.schema import build  # noqa: E402


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = save_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "fp32", "llama", num_layers=1, hidden_size=64,
                              num_heads=2, num_kv_heads=1, intermediate_size=96)
    out = path.parent / "bf16"
    AutoModelForCausalLM.from_pretrained(str(path)).to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (path / name).exists():
            (out / name).write_bytes((path / name).read_bytes())
    return out


@pytest.fixture(scope="module")
def world():
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed

    init_distributed(build(RecipeConfig, {}).policy.parallel)
    yield
    destroy_distributed()


def make_policy(path, dtype: str, distributed: bool):
    from gdpo_megatron.megatron_policy import MegatronPolicy

    return MegatronPolicy(build(RecipeConfig, {"policy": {
        "model": {"hf_path": str(path) if path else None, **({} if path else {
            "family": "llama", "num_layers": 1, "hidden_size": 64, "ffn_hidden_size": 96, "num_attention_heads": 2,
            "num_query_groups": 1, "vocab_size": 257, "head_dim": 64})},
        "precision": {"dtype": dtype}, "optimizer": {"distributed": distributed}}}))


def named_params(policy) -> dict[int, str]:
    from gdpo_megatron.policy.model import unwrap

    return {id(p): n for chunk in policy.model for n, p in unwrap(chunk).named_parameters()}


def masters_by_name(policy) -> dict[str, torch.Tensor]:
    from gdpo_megatron.policy.master_weights import master_copies

    names = named_params(policy)
    return {names[id(param)]: master for param, master in master_copies(policy.optimizer)}


@pytest.mark.parametrize("distributed", [True, False], ids=["distributed-optimizer", "mixed-precision-optimizer"])
def test_bf16_master_weights_equal_the_loaded_hf_weights(world, bf16_checkpoint, distributed):
    from gdpo_megatron.policy.model import unwrap

    exact = {n: p.detach() for chunk in make_policy(bf16_checkpoint, "fp32", False).model
             for n, p in unwrap(chunk).named_parameters()}
    masters = masters_by_name(make_policy(bf16_checkpoint, "bf16", distributed))
    assert masters.keys() == exact.keys() and len(masters) >= 8
    for name, master in masters.items():
        assert master.dtype == torch.float32, name
        assert torch.equal(master, exact[name].reshape(-1)), name


def test_an_optimizer_built_before_the_load_keeps_stale_masters(world, bf16_checkpoint):
    """The failure mode the load-then-build order avoids (and the check above would catch)."""
    from gdpo_megatron.conversion import load_hf_weights
    from gdpo_megatron.policy.model import unwrap

    policy = make_policy(None, "bf16", True)  # optimizer built from the random initialization
    load_hf_weights(policy.model, bf16_checkpoint, build(RecipeConfig, {"policy": {
        "model": {"hf_path": str(bf16_checkpoint)}}}).policy)
    masters = masters_by_name(policy)
    loaded = {n: p.detach().float().reshape(-1) for chunk in policy.model for n, p in unwrap(chunk).named_parameters()}
    stale = [n for n in masters if not torch.equal(masters[n], loaded[n]) and "norm" not in n]
    assert stale, "masters followed a load that happened after the optimizer was built"
