"""The distinct-advantage-group analysis against an independent brute force, and the command."""

import itertools
import json
import math
import statistics

import pytest
import torch

from gdpo_megatron.algorithms.advantages import compute_advantages
from gdpo_megatron.algorithms.analysis import (count_distinct_groups, count_distinct_rows, enumerate_multisets,
                                               group_advantages, multiset_count, reward_vectors)
from gdpo_megatron.cli import main
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec


def _standardized(values):
    """Plain-Python group normalization: (x - mean) / unbiased std, 0 for a constant group."""
    if len(set(values)) == 1:
        return [0.0] * len(values)
    mean = statistics.fmean(values)
    std = statistics.stdev(values)
    return [(v - mean) / std for v in values]


def brute_force(k, g, estimator, compare):
    """Independent count: itertools multisets, Python floats, a set of rounded tuples."""
    vectors = sorted(itertools.product((0, 1), repeat=k))  # lexicographic = canonical rollout order
    seen = set()
    for multiset in itertools.combinations_with_replacement(vectors, g):
        if estimator == "gdpo":
            columns = [_standardized([v[j] for v in multiset]) for j in range(k)]
            adv = [sum(col[i] for col in columns) for i in range(g)]
        else:
            totals = [sum(v) for v in multiset]
            if estimator == "grpo":
                adv = _standardized(totals)
            else:
                mean = statistics.fmean(totals)
                adv = [t - mean for t in totals]
        key = tuple(round(a, 6) + 0.0 for a in adv)
        seen.add(tuple(sorted(key)) if compare == "sorted" else key)
    return len(seen)


SMALL = [(k, g) for k in (1, 2, 3) for g in (1, 2, 3, 4, 5) if multiset_count(k, g) <= 1000]


@pytest.mark.parametrize("compare", ["aligned", "sorted"])
@pytest.mark.parametrize("estimator", ["grpo", "gdpo", "grpo-nostd"])
def test_counts_equal_brute_force(estimator, compare):
    for k, g in SMALL:
        got = count_distinct_groups(k, g, estimator, compare).distinct_groups
        assert got == brute_force(k, g, estimator, compare), (k, g, estimator, compare)


def test_hand_counted_small_cases():
    # K=2, G=2: GRPO has (0,0) and (-1/sqrt2, +1/sqrt2); GDPO adds (-sqrt2, +sqrt2) for {00, 11}
    # (the pair {01, 10} gives (0, 0): each reward +-1/sqrt2 with opposite signs).
    assert count_distinct_groups(2, 2, "grpo").distinct_groups == 2
    assert count_distinct_groups(2, 2, "gdpo").distinct_groups == 3
    # without std, totals (0,1) and (0,2) differ: (0,0), (-.5,.5), (-1,1)
    assert count_distinct_groups(2, 2, "grpo-nostd").distinct_groups == 3
    # one binary reward, G=4: 5 multisets, all-0 and all-1 coincide -> 4
    for estimator in ("grpo", "gdpo", "grpo-nostd"):
        assert count_distinct_groups(1, 4, estimator).distinct_groups == 4


def test_gdpo_resolves_more_than_grpo_and_the_gap_widens():
    grpo = [count_distinct_groups(2, g, "grpo").distinct_groups for g in range(2, 9)]
    gdpo = [count_distinct_groups(2, g, "gdpo").distinct_groups for g in range(2, 9)]
    gaps = [b - a for a, b in zip(grpo, gdpo)]
    assert all(b > a for a, b in zip(grpo, gdpo))
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]


def test_enumeration_is_every_multiset_once():
    rows = enumerate_multisets(5, 3)
    assert rows.shape == (math.comb(7, 3), 3)
    expected = sorted(itertools.combinations_with_replacement(range(5), 3))
    assert sorted(map(tuple, rows.tolist())) == expected
    assert len(set(map(tuple, rows.tolist()))) == rows.shape[0]


def test_count_distinct_rows_matches_unique():
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(-3, 4, (500, 3), generator=gen)
    assert count_distinct_rows(rows) == torch.unique(rows, dim=0).shape[0]


def test_analysis_normalization_is_the_training_estimator_without_eps():
    """The dense analysis math equals compute_advantages (eps 0, no batch step) on the same groups."""
    multisets = enumerate_multisets(8, 4)[::7]
    rewards = reward_vectors(multisets, 3)
    m, g, k = rewards.shape
    flat = rewards.reshape(m * g, k)
    group_ids = torch.arange(m).repeat_interleave(g)
    specs = [RewardSpec(name=f"r{i}") for i in range(k)]
    for estimator, name in (("gdpo", "gdpo"), ("grpo", "grpo"), ("grpo-nostd", "grpo_nostd")):
        extra = {"batch_norm": "none"} if name == "gdpo" else {}
        config = AlgorithmConfig(estimator=name, rewards=specs, group_eps=0.0, eps_mode="where_positive", **extra)
        trained = compute_advantages(flat, group_ids, config).advantages.double().reshape(m, g)
        assert torch.allclose(group_advantages(rewards, estimator), trained, atol=1e-6), estimator


def test_command_json_and_table(capsys):
    assert main(["analyze", "groups", "--rewards", "2", "--rollouts", "2..4", "--estimator", "grpo,gdpo",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[:2] == [{"rewards": 2, "rollouts": 2, "estimator": "grpo", "distinct_groups": 2},
                        {"rewards": 2, "rollouts": 2, "estimator": "gdpo", "distinct_groups": 3}]
    assert [r["rollouts"] for r in rows] == [2, 2, 3, 3, 4, 4]
    assert main(["analyze", "groups", "--rewards", "1..2", "--rollouts", "4", "--estimator", "grpo-nostd"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rewards", "rollouts", "estimator", "distinct_groups", "multisets"]
    assert lines[2].split() == ["2", "4", "grpo-nostd", "10", "35"]


def test_command_errors_are_clear(capsys):
    assert main(["analyze", "groups", "--rewards", "9", "--rollouts", "4"]) == 2
    assert "2,896,986,240 multisets" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", "groups", "--rewards", "2", "--rollouts", "5..2"])
    assert "empty range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["analyze", "groups", "--rewards", "2", "--rollouts", "4", "--estimator", "gdpo,dapo"])
    assert "unknown estimator 'dapo'" in capsys.readouterr().err


def test_example_prints_the_paper_numbers(capsys):
    assert main(["analyze", "example"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("A ", "B "))]
    assert [r[5] for r in rows] == ["-0.7071", "+0.7071", "-0.7071", "+0.7071"]  # GRPO
    assert [r[6] for r in rows] == ["-0.7071", "+0.7071", "-1.4142", "+1.4142"]  # GDPO before the batch step
