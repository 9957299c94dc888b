"""Everything checkable from the recipe alone is refused when it is loaded, by every entry point,
with the dotted key and the file that set it."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from gdpo_megatron.cli import main
from gdpo_megatron.config import ConfigError
from gdpo_megatron.recipe_checks import load_checked_recipe
from helpers.recipes import tiny_recipe_with

ROOT = Path(__file__).resolve().parents[2]


BAD_REWARD = """
algorithm:
  rewards:
    - {name: correct, function: no_such_reward}
"""


@pytest.mark.parametrize("command, options", [
    (["config", "show"], []), (["plan"], []),
    (["launch"], ["--cluster", str(ROOT / "clusters" / "local.yaml"), "--dryrun"]), (["train"], []),
])
def test_every_entry_point_refuses_an_unregistered_reward_before_starting_anything(tmp_path, capsys, command, options):
    recipe = tiny_recipe_with(tmp_path, BAD_REWARD)
    run_dir = tmp_path / "run"
    args = [*command, str(recipe), f"trainer.run_dir={run_dir}", *options]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gdpo: configuration error: algorithm.rewards[0].function: unknown reward function "
                          "'no_such_reward'"), err
    assert str(recipe) in err and "Rerun" not in err
    assert not run_dir.exists()  # train stopped before creating its run directory (no warm start, no Ray)


def test_reward_arguments_are_checked_against_the_function(tmp_path):
    recipe = tiny_recipe_with(tmp_path, """
    algorithm:
      rewards:
        - {name: correct, function: synthetic_correct}
        - {name: length, function: synthetic_length, args: {max_tokenz: 8}}
    """)
    with pytest.raises(ConfigError) as info:
        load_checked_recipe(recipe)
    text = str(info.value)
    assert text.startswith("algorithm.rewards[1].args: reward function 'synthetic_length' does not accept these "
                           "arguments")
    assert "max_tokenz" in text and "it takes: max_tokens" in text and str(recipe) in text
    good = tiny_recipe_with(tmp_path, """
    algorithm:
      rewards:
        - {name: length, function: synthetic_length, args: {max_tokens: 8}}
    """)
    assert load_checked_recipe(good).algorithm.rewards[0].args == {"max_tokens": 8}


def test_reward_modules_are_imported_and_their_rewards_accepted(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_for_check.py").write_text(textwrap.dedent("""
        from gdpo_megatron.rewards import REWARDS

        @REWARDS.register("exclaims")
        def exclaims(record, response, num_tokens, *, mark="!"):
            return float(mark in response)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tiny_recipe_with(tmp_path, """
    scoring: {reward_modules: [my_rewards_for_check]}
    algorithm:
      rewards:
        - {name: loud, function: exclaims, args: {mark: "?"}}
    """)
    assert load_checked_recipe(recipe).algorithm.rewards[0].function == "exclaims"
    wrong = tiny_recipe_with(tmp_path, """
    scoring: {reward_modules: [my_rewards_for_check]}
    algorithm:
      rewards:
        - {name: loud, function: exclaims, args: {colour: red}}
    """)
    with pytest.raises(ConfigError, match=r"^algorithm.rewards\[0\].args: .*it takes: mark"):
        load_checked_recipe(wrong)
    missing = tiny_recipe_with(tmp_path, """
    scoring: {reward_modules: [no_such_module_for_check]}
    """)
    with pytest.raises(ConfigError, match=r"^scoring.reward_modules\[0\]: cannot import 'no_such_module_for_check': "
                                          r"ModuleNotFoundError"):
        load_checked_recipe(missing)
    sys.modules.pop("my_rewards_for_check", None)


def test_data_files_must_exist_and_parse(tmp_path):
    missing = tiny_recipe_with(tmp_path, f"""
    data: {{task: math, train_path: {tmp_path / 'nope.jsonl'}}}
    """)
    with pytest.raises(ConfigError, match=r"^data.train_path: no such data file: .*nope.jsonl"):
        load_checked_recipe(missing, require_data_files=True)
    # plan / launch / config show plan for a cluster whose filesystem may hold the file
    assert load_checked_recipe(missing).data.train_path.endswith("nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "prompt": "1+1?", "answer": "2"}) + "\n{oops\n")
    broken = tiny_recipe_with(tmp_path, f"""
    data: {{task: math, train_path: {bad}}}
    """)
    with pytest.raises(ConfigError) as info:
        load_checked_recipe(broken)
    assert str(info.value).startswith("data.train_path: ") and "bad.jsonl" in str(info.value)
    assert "bad.jsonl:2: not valid JSON" in str(info.value)


def test_train_refuses_a_missing_data_file_before_starting_anything(tmp_path, capsys):
    recipe = tiny_recipe_with(tmp_path, f"""
    data: {{task: math, train_path: {tmp_path / 'nope.jsonl'}}}
    """)
    run_dir = tmp_path / "run"
    assert main(["train", str(recipe), f"trainer.run_dir={run_dir}"]) == 2
    assert capsys.readouterr().err.startswith("gdpo: configuration error: data.train_path: no such data file")
    assert not run_dir.exists()


def test_a_missing_prepared_file_names_the_command_that_writes_it(repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # the recipe's data path is relative, as users run it
    recipe = "recipes/qwen2.5-1.5b-instruct/tool-calling-gdpo-1n8g.yaml"
    with pytest.raises(ConfigError, match=r"^data.train_path: no such data file: data/tool_calling/train.jsonl .*"
                                          r"it is written by `gdpo data prepare toolrl --out data/tool_calling`"):
        load_checked_recipe(recipe, ["data.train_path=data/tool_calling/train.jsonl"], require_data_files=True)
