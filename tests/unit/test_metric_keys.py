"""The metrics contract: one declaration per key, declared reductions, generated docs."""

from __future__ import annotations

import math

import pytest
import torch

from gdpo_megatron.config import load_recipe
from gdpo_megatron.metrics import docs, keys
from gdpo_megatron.metrics.keys import (ADVANTAGES, KEYS, POLICY, REWARDS, TRAINER, UndeclaredMetric, check,
                                        disjoint_union, expected_keys, lookup, merge)

RECIPE = "recipes/tiny/synthetic-gdpo-1n2c.yaml"


def test_every_declaration_is_found_by_its_own_key_and_exact_keys_win():
    for key in KEYS:
        concrete = key.pattern.replace("{name}", "fmt").replace("{gated}", "len").replace("{metric}", "accuracy")
        assert lookup(concrete) is key, key.pattern
    assert lookup("reward/combined/mean").producer == TRAINER
    assert "weighted sum" in lookup("reward/combined/mean").meaning
    assert lookup("reward/format/mean").pattern == "reward/{name}/mean"
    with pytest.raises(UndeclaredMetric, match="'loss/total' is not declared"):
        lookup("loss/total")


def test_declaring_a_key_twice_is_refused():
    with pytest.raises(ValueError, match="declared twice"):
        keys._index([keys.Key("a/b", TRAINER, keys.SUM, "x"), keys.Key("a/b", POLICY, keys.MAX, "y")])
    with pytest.raises(ValueError, match="reduction must be one of"):
        keys.Key("a/b", TRAINER, "median", "x")


def test_documented_but_never_written_keys_are_gone():
    for stale in ("loss/total", "loss/pg", "kl/mean", "clip_frac", "memory/rss_gb",
                  "time/validation", "entropy/mean", "reward_time_s"):
        with pytest.raises(UndeclaredMetric):
            lookup(stale)


def test_policy_ranks_merge_with_the_declared_reduction():
    # Two data-parallel shards: a mean of means, the max of maxima, token counts add up; the
    # loss terms are equal on every rank; the slowest rank's time counts.
    rank0 = {"mismatch/mean": 0.2, "mismatch/max": 0.5, "mismatch/tokens": 10.0, "train/loss": 1.25,
             "train/ratio_min": 0.8, "time/advantage": 0.1, "adv/max": 2.0}
    rank1 = {"mismatch/mean": 0.4, "mismatch/max": 0.0, "mismatch/tokens": 30.0, "train/loss": 1.25,
             "train/ratio_min": 0.7, "time/advantage": 0.3, "adv/max": 2.0}
    merged = merge([rank0, rank1], {POLICY, ADVANTAGES})
    assert merged == {"mismatch/mean": pytest.approx(0.3), "mismatch/max": 0.5, "mismatch/tokens": 40.0,
                      "train/loss": 1.25, "train/ratio_min": 0.7, "time/advantage": 0.3, "adv/max": 2.0}
    # a TP/PP rank that does not report the shard's mismatch does not dilute it
    assert merge([rank0, {"train/loss": 1.25}])["mismatch/max"] == 0.5
    # a non-finite report stays visible whatever the rank order
    for order in ([0.5, math.nan], [math.nan, 0.5]):
        assert math.isnan(merge([{"mismatch/max": v} for v in order])["mismatch/max"])


def test_reward_counters_add_up_over_resampling_rounds():
    round1 = {"reward_errors/fmt": 1.0, "reward_timeouts/fmt": 0.0, "reward_nan/fmt": 2.0,
              "time/reward_scoring": 0.5, "time/generation": 3.0}
    round2 = {"reward_errors/fmt": 2.0, "reward_timeouts/fmt": 1.0, "reward_nan/fmt": 3.0,
              "time/reward_scoring": 0.25, "time/generation": 1.0, "dynamic_sampling/rounds": 2.0}
    assert merge([round1, round2], {REWARDS, TRAINER}) == {
        "reward_errors/fmt": 3.0, "reward_timeouts/fmt": 1.0, "reward_nan/fmt": 5.0,
        "time/reward_scoring": 0.75, "time/generation": 4.0, "dynamic_sampling/rounds": 2.0}


def test_undeclared_or_misattributed_keys_raise_in_strict_mode_and_warn_otherwise(monkeypatch, caplog):
    monkeypatch.setenv("GDPO_STRICT_METRICS", "1")
    with pytest.raises(UndeclaredMetric, match="'kl/mean' is not declared"):
        merge([{"kl/mean": 0.1}])
    with pytest.raises(UndeclaredMetric, match="'reward/fmt/mean' is declared for producer 'trainer'"):
        check({"reward/fmt/mean": 0.5}, {ADVANTAGES})
    with pytest.raises(UndeclaredMetric, match="'samples' is written twice"):
        disjoint_union({"samples": 1.0}, {"samples": 2.0})
    monkeypatch.setenv("GDPO_STRICT_METRICS", "0")
    with caplog.at_level("WARNING"):
        assert merge([{"kl/mean": 0.1}, {"kl/mean": 0.3}]) == {"kl/mean": pytest.approx(0.2)}
    assert "'kl/mean' is not declared" in caplog.text


def test_expected_keys_instantiate_patterns_for_the_recipe(repo_root):
    recipe = load_recipe(repo_root / RECIPE)
    expected = expected_keys(recipe)
    assert {"reward/correct/mean", "reward/format/mean", "reward/length/mean", "reward/combined/mean",
            "reward/length/raw_mean", "reward/length/gate_open_frac", "reward_errors/format", "val/accuracy",
            "val/format_rate", "val/exceed", "mismatch/max", "mismatch/above_warn"} <= expected
    # only the conditioned reward has a raw mean; off settings write nothing
    assert "reward/correct/raw_mean" not in expected and "reward/combined/std" not in expected
    assert not {k for k in expected if k.startswith(("dynamic_sampling/", "val_at_start/"))}
    assert "train/kl_ref" not in expected and "adv/gpg_alpha" not in expected
    sampled = expected_keys(load_recipe(repo_root / RECIPE, ["trainer.dynamic_sampling.enabled=true",
                                                             "trainer.validation.every_steps=0"]))
    assert {"dynamic_sampling/rounds", "dynamic_sampling/dropped_groups"} <= sampled
    assert not {k for k in sampled if k.startswith("val/")}


def test_the_trainer_is_the_only_producer_of_reward_means():
    # With overlong filtering the advantage stage sees the truncated rollout's rewards as missing;
    # the reward means stay those of all rollouts, consistent with the combined reward.
    from gdpo_megatron.algorithms.advantages import compute_advantages
    from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec
    from gdpo_megatron.trainer import reward_metrics

    specs = [RewardSpec(name="correct"), RewardSpec(name="format")]
    rewards = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    means = reward_metrics(rewards, specs)
    assert means == {"reward/correct/mean": 0.5, "reward/format/mean": 0.5, "reward/combined/mean": 1.0}
    filtered = rewards.clone()
    filtered[0] = math.nan
    diagnostics = compute_advantages(filtered, torch.tensor([0, 0, 1, 1]), AlgorithmConfig(rewards=specs)).diagnostics
    assert not {k for k in diagnostics if k.endswith("/mean") and k.startswith("reward/")}
    check(diagnostics, {ADVANTAGES})
    assert diagnostics["reward/correct/missing_frac"] == 0.25
    assert disjoint_union(means, diagnostics)["reward/correct/mean"] == 0.5


def test_observability_page_lists_the_registry(repo_root):
    page = (repo_root / "docs" / "observability.md").read_text(encoding="utf-8")
    assert docs.render_page(page) == page, "run: python -m gdpo_megatron.metrics.docs --write"
    for key in KEYS:
        assert f"| `{key.pattern}` |" in page
    assert docs.main(["--check", str(repo_root / "docs" / "observability.md")]) == 0
