"""Recipe loading: `defaults:` inheritance, overrides, typed validation and its messages."""

from pathlib import Path

import pytest
import yaml

from gdpo_megatron.config import ConfigError, load_recipe
from gdpo_megatron.config.loader import LoadedConfig, apply_overrides, parse_override_value


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


@pytest.fixture
def recipes(tmp_path):
    write(tmp_path / "base" / "common.yaml", {
        "seed": 1,
        "trainer": {"max_steps": 10, "prompts_per_step": 8, "checkpoint": {"every_steps": 5, "keep_last": 3}},
        "generation": {"sampling": {"temperature": 0.7, "stop": ["</answer>"]}},
    })
    write(tmp_path / "base" / "algo.yaml", {
        "algorithm": {"estimator": "gdpo", "rewards": [{"name": "correct", "function": "synthetic_correct"},
                                                       {"name": "fmt", "function": "synthetic_format", "weight": 0.5}]},
        "trainer": {"max_steps": 20},
    })
    write(tmp_path / "child.yaml", {
        "defaults": ["base/common.yaml", "base/algo.yaml"],
        "name": "child",
        "trainer": {"prompts_per_step": 4},
    })
    return tmp_path


def test_defaults_merge_in_order_and_file_wins(recipes):
    cfg = load_recipe(recipes / "child.yaml")
    assert cfg.name == "child"
    assert cfg.seed == 1
    assert cfg.trainer.max_steps == 20  # the later default overrides the earlier one
    assert cfg.trainer.prompts_per_step == 4  # the file itself overrides its defaults
    assert cfg.trainer.checkpoint.every_steps == 5  # nested mappings merge key by key
    assert cfg.trainer.checkpoint.keep_last == 3
    assert cfg.algorithm.reward_names == ["correct", "fmt"]
    assert cfg.algorithm.reward_weights == [1.0, 0.5]


def test_single_string_defaults_and_replace_marker(recipes):
    write(recipes / "replace.yaml", {
        "defaults": "base/common.yaml",
        "trainer": {"_replace_": True, "max_steps": 3},
    })
    cfg = load_recipe(recipes / "replace.yaml")
    assert cfg.trainer.max_steps == 3
    # replaced wholesale: the parent's prompts_per_step (8) and checkpoint section are gone
    assert cfg.trainer.prompts_per_step == 32  # schema default
    assert cfg.trainer.checkpoint.every_steps == 50
    assert cfg.generation.sampling.stop == ["</answer>"]


def test_lists_replace_rather_than_merge(recipes):
    write(recipes / "list.yaml", {"defaults": "child.yaml", "algorithm": {"rewards": [{"name": "only"}]}})
    assert load_recipe(recipes / "list.yaml").algorithm.reward_names == ["only"]


@pytest.mark.parametrize("text,expected", [
    ("3", 3), ("1e-6", 1e-6), ("0.5", 0.5), ("true", True), ("False", False), ("null", None),
    ("[1, 2]", [1, 2]), ("abc", "abc"), ("'3'", "3"), ("", ""),
])
def test_override_values_are_typed(text, expected):
    value = parse_override_value(text)
    assert value == expected and type(value) is type(expected)


def test_overrides_set_existing_and_add_new_keys(recipes):
    cfg = load_recipe(recipes / "child.yaml", ["trainer.max_steps=7", "generation.sampling.top_p=0.95",
                                              "+algorithm.loss.kl_coef=0.001", "generation.sampling.stop=[a, b]"])
    assert cfg.trainer.max_steps == 7
    assert cfg.generation.sampling.top_p == 0.95
    assert cfg.algorithm.loss.kl_coef == 0.001
    assert cfg.generation.sampling.stop == ["a", "b"]


def test_override_of_missing_key_needs_plus_and_suggests(recipes):
    with pytest.raises(ConfigError) as err:
        load_recipe(recipes / "child.yaml", ["trainer.max_stepz=3"])
    msg = str(err.value)
    assert "trainer.max_stepz" in msg and 'did you mean "max_steps"' in msg and "+trainer.max_stepz" in msg


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides(LoadedConfig(data={}), ["trainer.max_steps"])


def test_unknown_key_names_path_file_and_suggestion(recipes):
    write(recipes / "typo.yaml", {"defaults": "child.yaml", "trainer": {"promts_per_step": 2}})
    with pytest.raises(ConfigError) as err:
        load_recipe(recipes / "typo.yaml")
    msg = str(err.value)
    assert msg.startswith("trainer.promts_per_step: unknown key")
    assert 'did you mean "prompts_per_step"' in msg
    assert str(recipes / "typo.yaml") in msg


def test_unknown_key_added_on_command_line_names_the_command_line(recipes):
    with pytest.raises(ConfigError, match=r"trainer\.foo: unknown key \(set in command line\)"):
        load_recipe(recipes / "child.yaml", ["+trainer.foo=1"])


@pytest.mark.parametrize("override,message", [
    ("trainer.max_steps=abc", "trainer.max_steps: expected an integer, got 'abc'"),
    ("trainer.max_steps=-1", "trainer.max_steps: must be >= 1, got -1"),
    ("generation.sampling.top_p=1.5", "generation.sampling.top_p: must be <= 1, got 1.5"),
    ("trainer.logging.tensorboard=3", "trainer.logging.tensorboard: expected a boolean"),
    ("policy.precision.dtype=fp16", "policy.precision.dtype: expected one of 'fp32', 'bf16', got 'fp16'"),
    ("trainer=5", "trainer: expected a mapping (section), got 5"),
])
def test_wrong_types_and_ranges_name_key_and_expectation(recipes, override, message):
    with pytest.raises(ConfigError) as err:
        load_recipe(recipes / "child.yaml", [override])
    assert message in str(err.value)
    assert "(set in command line)" in str(err.value)


def test_missing_defaults_file_names_the_including_file(recipes):
    write(recipes / "broken.yaml", {"defaults": "nope/missing.yaml"})
    with pytest.raises(ConfigError) as err:
        load_recipe(recipes / "broken.yaml")
    msg = str(err.value)
    assert "recipe file not found" in msg and "missing.yaml" in msg and "broken.yaml" in msg


def test_circular_defaults_are_reported(recipes):
    write(recipes / "a.yaml", {"defaults": "b.yaml"})
    write(recipes / "b.yaml", {"defaults": "a.yaml"})
    with pytest.raises(ConfigError, match="circular `defaults:` chain"):
        load_recipe(recipes / "a.yaml")


def test_invalid_yaml_and_non_mapping_top_level(recipes):
    write(recipes / "bad.yaml", "trainer: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(recipes / "bad.yaml")
    write(recipes / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping at the top level"):
        load_recipe(recipes / "list.yaml")


def test_cross_field_checks_name_the_key_and_source(recipes):
    with pytest.raises(ConfigError) as err:
        load_recipe(recipes / "child.yaml", ["algorithm.rewards=[{name: a}, {name: a}]"])
    assert "algorithm.rewards: reward names must be unique, repeated: a (set in command line)" in str(err.value)
    with pytest.raises(ConfigError, match=r"no reward named 'corect' \(did you mean \"correct\"\?\)"):
        load_recipe(recipes / "child.yaml",
                    ["algorithm.rewards=[{name: correct}, {name: len, condition: {reward: corect, threshold: 1}}]"])


def test_config_show_prints_resolved_yaml(recipes, capsys):
    from gdpo_megatron.cli import main

    assert main(["config", "show", str(recipes / "child.yaml"), "trainer.max_steps=9"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["trainer"]["max_steps"] == 9
    assert shown["trainer"]["prompts_per_step"] == 4
    assert shown["algorithm"]["rewards"][1] == {"name": "fmt", "function": "synthetic_format", "weight": 0.5, "args": {},
                                                "condition": None}


def test_cli_reports_config_errors_without_traceback(recipes, capsys):
    from gdpo_megatron.cli import main

    assert main(["config", "show", str(recipes / "child.yaml"), "trainer.max_stepz=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gdpo: configuration error: override 'trainer.max_stepz=1'")
    assert "Traceback" not in err


def test_schema_keys_absent_from_the_recipe_can_be_overridden_without_plus(recipes):
    cfg = load_recipe(recipes / "child.yaml", ["trainer.logging.tensorboard=true", "policy.precision.dtype=bf16"])
    assert cfg.trainer.logging.tensorboard is True
    assert cfg.policy.precision.dtype == "bf16"
    with pytest.raises(ConfigError, match=r'no key `policy.precison` in the recipe or its schema \(did you mean "precision"\?\)'):
        load_recipe(recipes / "child.yaml", ["policy.precison.dtype=bf16"])



def test_overlap_generation_needs_engines_of_their_own():
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build

    assert build(RecipeConfig, {"trainer": {"overlap_generation": True}, "generation": {"colocated": False}})
    with pytest.raises(ConfigError, match="trainer.overlap_generation: colocated engines sleep"):
        build(RecipeConfig, {"trainer": {"overlap_generation": True}, "generation": {"colocated": True}})
    with pytest.raises(ConfigError, match="trainer.overlong_filtering: every response is cut"):
        build(RecipeConfig, {"trainer": {"overlong_filtering": True},
                             "generation": {"sampling": {"max_new_tokens": 8, "min_new_tokens": 8}}})
    assert build(RecipeConfig, {"trainer": {"overlong_filtering": True},
                                "generation": {"sampling": {"max_new_tokens": 8, "min_new_tokens": 7}}})
    with pytest.raises(ConfigError, match="trainer.overlap_generation: the megatron backend"):
        build(RecipeConfig, {"trainer": {"overlap_generation": True},
                             "generation": {"backend": "megatron", "colocated": False}})
