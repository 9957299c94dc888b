"""RewardRunner: real worker processes; failures, hangs and dying workers become NaN + metrics."""

import math

import pytest
import torch

from gdpo_megatron.config.algorithm import RewardSpec
from gdpo_megatron.config.errors import ConfigError
from gdpo_megatron.config.scoring import ScoringConfig
from gdpo_megatron.metrics.keys import REWARDS, check
from gdpo_megatron.rewards import RewardRunner

PLUGINS = ["test_rewards_plugins"]


@pytest.fixture(scope="module")
def runner():
    specs = [
        RewardSpec(name="len", function="test_echo_length", args={"scale": 0.5}),
        RewardSpec(name="raise", function="test_raise_on_bad"),
        RewardSpec(name="hang", function="test_hang_on_slow"),
        RewardSpec(name="die", function="test_die_on_kill"),
        RewardSpec(name="correct", function="synthetic_correct"),
    ]
    scoring = ScoringConfig(num_workers=2, timeout_s=1.5, max_logged_errors=2, reward_modules=PLUGINS)
    with RewardRunner(specs, scoring) as r:
        yield r


def test_values_and_failures(runner, caplog):
    records = [{"id": f"r{i}", "answer": 7} for i in range(5)]
    responses = ["<answer>7</answer>", "bad", "slow", "kill", "<answer>8</answer>"]
    with caplog.at_level("WARNING"):
        batch = runner.score(records, responses, [5, 1, 1, 1, 5])
    nan = math.nan
    expected = torch.tensor([
        [9.0, 1.0, 2.0, 3.0, 1.0],
        [1.5, nan, 2.0, 3.0, 0.0],
        [2.0, 1.0, nan, 3.0, 0.0],
        [2.0, 1.0, 2.0, nan, 0.0],
        [9.0, 1.0, 2.0, 3.0, 0.0],
    ])
    assert batch.values.dtype == torch.float32 and batch.values.shape == (5, 5)
    assert torch.equal(torch.isnan(batch.values), torch.isnan(expected))
    assert torch.allclose(torch.nan_to_num(batch.values), torch.nan_to_num(expected))
    m = batch.metrics
    assert m["reward_errors/raise"] == 1 and m["reward_timeouts/raise"] == 0
    assert m["reward_timeouts/hang"] == 1 and m["reward_errors/hang"] == 0
    assert m["reward_errors/die"] == 1
    assert m["reward_nan/len"] == 0 and m["reward_nan/hang"] == 1
    assert m["reward_nan/correct"] == 0 and m["reward_nan/raise"] == 1 and m["reward_nan/die"] == 1
    # the runner writes only its own counters (reward means are the trainer's), all declared
    assert set(m) == {"time/reward_scoring"} | {f"{group}/{name}" for name in runner.names
                                                for group in ("reward_errors", "reward_timeouts", "reward_nan", "reward_refusals",
                                                                  "reward_sandbox_failures", "reward_out_of_range",
                                                                  "reward_program_timeouts")}
    check(m, {REWARDS})
    logged = caplog.text
    assert "'r1'" in logged and "ValueError: bad rollout" in logged
    assert "'r2'" in logged and "timed out" in logged
    assert "'r3'" in logged and "worker process died" in logged
    # the pool healed: the next batch is scored normally by the replacement workers
    again = runner.score(records[:2], ["<answer>7</answer>", "ok"], [1, 1])
    assert again.values[:, 4].tolist() == [1.0, 0.0] and not torch.isnan(again.values).any()
    assert runner.workers_replaced == 2


def test_unknown_reward_names_the_key():
    with pytest.raises(ConfigError, match=r"algorithm.rewards\[0\].function: unknown reward 'synthetic_corect'.*synthetic_correct"):
        RewardRunner([RewardSpec(name="c", function="synthetic_corect")], ScoringConfig())


def test_mismatched_lengths(runner):
    with pytest.raises(ValueError, match="2 records, 1 responses"):
        runner.score([{}, {}], ["x"], [1, 1])
