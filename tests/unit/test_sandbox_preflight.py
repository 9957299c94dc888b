"""A code reward's sandbox mode is checked before training: its name when the recipe is loaded,
the host's ability to run it when the reward worker starts (which prints the mode in use)."""

import io

import pytest

from gdpo_megatron.config import ConfigError
from gdpo_megatron.config.schema import to_dict
from gdpo_megatron.orchestration.reward_worker import RewardWorker
from gdpo_megatron.recipe_checks import load_checked_recipe
from gdpo_megatron.rewards import sandbox as sandbox_module
from gdpo_megatron.rewards.sandbox import SandboxError
from gdpo_megatron.rewards.sandbox_preflight import check_sandboxes, sandbox_modes, unavailable_reason
from helpers.recipes import tiny_recipe_with


CODE_REWARDS = """
algorithm:
  rewards:
    - {{name: correct, function: synthetic_correct}}
    - {{name: pass, function: code_pass, args: {{isolation: {mode}}}}}
    - {{name: no_bug, function: code_no_bug}}
"""


def test_an_unknown_isolation_mode_is_refused_at_load_naming_key_and_file(tmp_path):
    recipe = tiny_recipe_with(tmp_path, CODE_REWARDS.format(mode="userns"))
    with pytest.raises(ConfigError) as info:
        load_checked_recipe(recipe)
    assert str(info.value) == ("algorithm.rewards[1].args.isolation: reward function 'code_pass' takes isolation one "
                               f"of 'namespaces', 'rlimits', got 'userns' (set in {recipe})")
    for mode in ("namespaces", "rlimits"):  # the host is not asked at load: plans are made elsewhere
        assert load_checked_recipe(tiny_recipe_with(tmp_path, CODE_REWARDS.format(mode=mode))).algorithm.rewards[1].args == {
            "isolation": mode}


def _worker_data(tmp_path, mode):
    return to_dict(load_checked_recipe(tiny_recipe_with(tmp_path, CODE_REWARDS.format(mode=mode))))


def test_modes_in_use_are_read_from_the_sandboxed_rewards(tmp_path):
    recipe = load_checked_recipe(tiny_recipe_with(tmp_path, CODE_REWARDS.format(mode="rlimits")))
    assert sandbox_modes(recipe.algorithm.rewards) == {"rlimits": ["pass"], "namespaces": ["no_bug"]}
    tiny = load_checked_recipe(tiny_recipe_with(tmp_path, ""))
    assert sandbox_modes(tiny.algorithm.rewards) == {}
    assert check_sandboxes(tiny.algorithm.rewards, stream=io.StringIO()) == []  # nothing to run, nothing said


@pytest.mark.skipif(unavailable_reason("namespaces") is not None, reason=str(unavailable_reason("namespaces")))
def test_the_reward_worker_prints_the_mode_once(tmp_path, capsys):
    worker = RewardWorker(_worker_data(tmp_path, "namespaces"))
    try:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("gdpo rewards:")]
        bound = sandbox_module.memory_bound(sandbox_module.SandboxLimits())
        assert lines == [f"gdpo rewards: sandbox isolation: namespaces (memory: {bound}) for pass, no_bug"]
        assert worker.ready() == lines
    finally:
        worker.close()


@pytest.mark.skipif(unavailable_reason("rlimits") is not None, reason=str(unavailable_reason("rlimits")))
def test_a_weaker_mode_is_printed_as_a_warning(tmp_path):
    body = CODE_REWARDS.format(mode="rlimits").replace("function: code_no_bug}", "function: code_no_bug, "
                                                       "args: {isolation: rlimits}}")
    recipe = load_checked_recipe(tiny_recipe_with(tmp_path, body))
    stream = io.StringIO()
    lines = check_sandboxes(recipe.algorithm.rewards, stream=stream)
    assert stream.getvalue().splitlines() == lines and len(lines) == 1
    assert lines[0].startswith("gdpo rewards: WARNING: sandbox isolation: rlimits (memory: ")
    assert lines[0].endswith(" for pass, no_bug; weaker containment: the program sees the host's files that other "
                             "users may read, see docs/sandbox.md")


def test_a_worker_on_a_host_without_the_mode_fails_at_start(tmp_path, monkeypatch):
    data = _worker_data(tmp_path, "rlimits")
    monkeypatch.setattr(sandbox_module.os, "geteuid", lambda: 1000)
    with pytest.raises(SandboxError, match=r"^rewards pass: isolation: rlimits needs root \(euid 0\)"):
        RewardWorker(data)
    monkeypatch.undo()

    def no_namespaces(code, stdin="", limits=None):
        raise SandboxError("sandbox set-up failed (namespaces): unshare: Operation not permitted")

    monkeypatch.setattr(sandbox_module, "run_sandboxed", no_namespaces)  # a container that forbids unshare
    with pytest.raises(SandboxError) as info:
        RewardWorker(_worker_data(tmp_path, "namespaces"))
    assert str(info.value) == ("rewards pass, no_bug: this host cannot run sandbox isolation 'namespaces': sandbox "
                               "set-up failed (namespaces): unshare: Operation not permitted (docs/sandbox.md)")
