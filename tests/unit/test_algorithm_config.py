"""The `algorithm` section: validation messages and numerics resolution."""

from pathlib import Path

import pytest
import yaml

from gdpo_megatron.algorithms.advantages import PRESETS, resolve_numerics
from gdpo_megatron.config import ConfigError
from gdpo_megatron.config.algorithm import AlgorithmConfig
from gdpo_megatron.config.recipe import RecipeConfig
from gdpo_megatron.config.schema import build
from gdpo_megatron.recipe_checks import check_recipe, load_checked_recipe

TWO = [{"name": "correct"}, {"name": "length", "weight": 0.5}]


def algo(**data) -> AlgorithmConfig:
    data.setdefault("rewards", TWO)
    return build(AlgorithmConfig, data)


@pytest.mark.parametrize("data,message", [
    (dict(estimator="gdp0"),
     'algorithm.estimator: unknown estimator \'gdp0\' (did you mean "gdpo"?); registered: dr_grpo, gdpo,'),
    (dict(estimator="dr_grpo", group_std="unbiased"),
     "algorithm.group_std: estimator 'dr_grpo' always uses group_std='none', got 'unbiased'; leave group_std unset"),
    (dict(estimator="rloo", group_baseline="mean"),
     "algorithm.group_baseline: estimator 'rloo' always uses group_baseline='leave_one_out'"),
    (dict(loss={"type": "ppo2"}), "algorithm.loss.type: unknown loss 'ppo2' (did you mean \"ppo\"?)"),
])
def test_registry_side_checks(data, message):
    recipe = RecipeConfig(algorithm=algo(**data))
    algo(**data)  # the schema alone accepts it: names belong to the registries
    with pytest.raises(ConfigError) as info:
        check_recipe(recipe)
    assert message in str(info.value)


@pytest.mark.parametrize("data,message", [
    (dict(rewards=[{"name": "a"}, {"name": "a"}]), "rewards: reward names must be unique, repeated: a"),
    (dict(rewards=[{"name": "a", "condition": {"reward": "a", "threshold": 1}}]),
     "rewards[0].condition.reward: reward 'a' cannot be conditioned on itself"),
    (dict(rewards=[{"name": "correct"}, {"name": "length", "condition": {"reward": "corect", "threshold": 1}}]),
     'rewards[1].condition.reward: no reward named \'corect\' (did you mean "correct"?); rewards: correct, length'),
    (dict(rewards=[{"name": "a", "weight": 0}, {"name": "b", "weight": 0.0}]), "rewards: every reward weight is 0"),
    (dict(rewards=[{"name": "acc/train"}]), "rewards[0].name: 'acc/train' may not contain '/'"),
    (dict(rewards=[{"name": "combined"}]), "rewards[0].name: 'combined' is taken by the metric reward/combined/mean"),
    (dict(preset="openrlhf"), "preset: expected one of 'trl', 'verl', 'nemo_rl', got 'openrlhf'"),
    (dict(group_eps=-1e-4), "group_eps: must be >= 0.0, got -0.0001"),
    (dict(batch_norm="tokens"), 'batch_norm: expected one of \'none\', \'sample\', \'token\', got \'tokens\' (did you mean "token"?)'),
    (dict(batch_eps_mode="sqrt"), "batch_eps_mode: expected one of 'add', 'where_positive', 'inside_sqrt'"),
    (dict(rewards=[{"name": "a", "condition": {"reward": "b"}}, {"name": "b"}]),
     "rewards[0].condition.threshold: required key is missing"),
    (dict(singleton_group="one"), "singleton_group: expected one of 'zero', 'raw'"),
])
def test_validation_messages(data, message):
    with pytest.raises(ConfigError) as info:
        algo(**data)
    assert message in str(info.value)


def test_message_names_the_recipe_file(tmp_path: Path):
    recipe = tmp_path / "run.yaml"
    rewards = [{"name": "correct", "function": "synthetic_correct"}, {"name": "length", "weight": 0.5}]
    recipe.write_text(yaml.safe_dump({"algorithm": {"estimator": "gpg", "group_std": "biased", "rewards": rewards}}))
    with pytest.raises(ConfigError) as info:
        load_checked_recipe(recipe)
    text = str(info.value)
    assert text.startswith("algorithm.group_std: estimator 'gpg' always uses group_std='none'")
    assert str(recipe) in text
    cfg = load_checked_recipe(recipe, ["algorithm.estimator=grpo"])
    assert resolve_numerics(cfg.algorithm).group_std == "biased"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_null_fields_take_the_preset(preset):
    numerics = resolve_numerics(algo(preset=preset))
    assert {k: getattr(numerics, k) for k in PRESETS[preset]} == PRESETS[preset]


def test_reference_numerics_table():
    trl, verl, nemo = (resolve_numerics(algo(preset=p)) for p in ("trl", "verl", "nemo_rl"))
    assert (trl.group_std, trl.group_eps, trl.batch_norm, trl.batch_eps, trl.batch_eps_mode) == \
        ("unbiased", 1e-4, "sample", 1e-4, "add")
    assert (verl.group_eps, verl.singleton_group, verl.batch_norm, verl.batch_eps, verl.batch_eps_mode) == \
        (1e-6, "raw", "token", 1e-8, "inside_sqrt")
    assert (nemo.group_baseline, nemo.group_std, nemo.eps_mode, nemo.batch_eps, nemo.batch_eps_mode) == \
        ("mean", "unbiased", "where_positive", 0.0, "where_positive")  # NeMo-RL's GDPO recipes: no leave-one-out


def test_explicit_fields_win_and_estimators_fix_their_own():
    numerics = resolve_numerics(algo(preset="verl", group_eps=1e-3, batch_norm="sample"))
    assert (numerics.group_eps, numerics.batch_norm, numerics.batch_eps_mode) == (1e-3, "sample", "inside_sqrt")
    # only gdpo batch-normalizes by default; dr_grpo's fixed numerics override the preset's
    assert resolve_numerics(algo(estimator="grpo")).batch_norm == "none"
    assert resolve_numerics(algo(estimator="grpo", batch_norm="sample")).batch_norm == "sample"
    dr = resolve_numerics(algo(estimator="dr_grpo", preset="nemo_rl"))
    assert (dr.group_baseline, dr.group_std) == ("mean", "none")
    assert resolve_numerics(algo()).as_dict()["estimator"] == "gdpo"
