"""FP8 parameters need megatron's distributed optimizer: the other combination is a config error.

megatron-core's non-distributed mixed-precision optimizer builds its fp32 master copy from the
FP8 parameter (its dequantized, FP8-rounded values) and ignores the loaded high-precision value
that policy/master_weights.py hands the distributed optimizer; so `policy.precision.fp8_params`
with `policy.optimizer.distributed: false` would train from rounded weights. It is refused when
the recipe is validated, with both keys named.
"""

from __future__ import annotations

import pytest

from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.recipe import RecipeConfig
from gdpo_megatron.config.schema import build

FP8 = {"dtype": "bf16", "fp8": "e4m3", "fp8_params": True}


def recipe(precision, distributed):
    return build(RecipeConfig, {"policy": {"precision": precision, "optimizer": {"distributed": distributed}}})


def test_fp8_params_without_the_distributed_optimizer_names_both_keys():
    with pytest.raises(ConfigError) as caught:
        recipe(FP8, distributed=False)
    message = str(caught.value)
    assert message.startswith("policy.precision.fp8_params: ")
    assert "policy.optimizer.distributed" in message


def test_fp8_params_with_the_distributed_optimizer_and_fp8_compute_alone_are_accepted():
    assert recipe(FP8, distributed=True).policy.precision.fp8_params is True
    # FP8 compute without FP8 parameters keeps bf16 parameters: either optimizer builds right masters.
    accepted = recipe({"dtype": "bf16", "fp8": "e4m3", "fp8_params": False}, distributed=False)
    assert accepted.policy.optimizer.distributed is False and accepted.policy.precision.fp8 == "e4m3"


def test_the_check_runs_for_recipe_files_and_overrides(tmp_path):
    from gdpo_megatron.config import load_recipe

    path = tmp_path / "fp8.yaml"
    path.write_text("policy:\n  precision: {dtype: bf16, fp8: e4m3, fp8_params: true}\n")
    assert load_recipe(path).policy.optimizer.distributed is True
    with pytest.raises(ConfigError, match=r"^policy\.precision\.fp8_params: .*policy\.optimizer\.distributed"):
        load_recipe(path, ["policy.optimizer.distributed=false"])
