"""The distinct-advantage-group analysis against an independent brute force, and the command."""

import itertools
import json
import math
import statistics

import numpy as np
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


def numpy_brute_force(k, g, estimator):
    """The paper's counting, written independently of the package: itertools builds every
    multiset of G reward vectors, numpy normalizes each (population of G, unbiased std,
    0 for a constant column), and a group is the sorted tuple of its advantages."""
    types = np.fromiter(itertools.chain.from_iterable(itertools.combinations_with_replacement(range(2 ** k), g)),
                        dtype=np.int64).reshape(-1, g)
    rewards = ((types[..., None] >> np.arange(k)) & 1).astype(np.float64)  # [M, G, K]

    def standardize(x):  # over axis 1 (the G rollouts)
        centered = x - x.mean(axis=1, keepdims=True)
        std = x.std(axis=1, ddof=1, keepdims=True)
        safe = np.where(std > 0, std, 1.0)
        return np.where(std > 0, centered / safe, 0.0)

    if estimator == "gdpo":
        advantages = standardize(rewards).sum(axis=2)
    else:
        advantages = standardize(rewards.sum(axis=2, keepdims=True))[..., 0]
    groups = np.ascontiguousarray(np.sort(np.rint(advantages * 1e6).astype(np.int64), axis=1))
    return len(np.unique(groups.view(np.dtype((np.void, 8 * g)))))  # rows as opaque byte strings


# What `gdpo analyze groups` prints by default (the paper's Fig. 3 counting); README and
# docs/advantages.md quote these.
PAPER_K2 = {"grpo": [2, 4, 7, 11, 16, 22, 29, 37, 46, 56], "gdpo": [3, 6, 14, 26, 38, 59, 81, 109, 145, 186]}
PAPER_G4 = {"grpo": [7, 14, 23, 41, 56], "gdpo": [14, 45, 127, 318, 722]}


def _default_counts(capsys, rewards, rollouts):
    assert main(["analyze", "groups", "--rewards", rewards, "--rollouts", rollouts, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["compare"] for r in rows} == {"sorted"}
    return {e: [r["distinct_groups"] for r in rows if r["estimator"] == e] for e in ("grpo", "gdpo")}


def test_default_counts_are_the_papers_two_rewards_g_2_to_11(capsys):
    counts = _default_counts(capsys, "2", "2..11")
    brute = {e: [numpy_brute_force(2, g, e) for g in range(2, 12)] for e in ("grpo", "gdpo")}
    assert counts == brute == PAPER_K2


def test_default_counts_are_the_papers_four_rollouts_k_2_to_6(capsys):
    counts = _default_counts(capsys, "2..6", "4")
    brute = {e: [numpy_brute_force(k, 4, e) for k in range(2, 7)] for e in ("grpo", "gdpo")}
    assert counts == brute == PAPER_G4


def test_aligned_mode_stays_available_by_name():
    # aligned separates equal advantage values reached by different reward vectors
    assert count_distinct_groups(2, 11, "gdpo", "aligned").distinct_groups == 266
    assert count_distinct_groups(5, 4, "gdpo", "aligned").distinct_groups == 1458
    assert count_distinct_groups(5, 4, "grpo", "aligned").distinct_groups == 199
    assert count_distinct_groups(2, 11, "grpo", "aligned").distinct_groups == 56


def test_hand_counted_small_cases():
    # K=2, G=2: GRPO has (0,0) and (-1/sqrt2, +1/sqrt2); GDPO adds (-sqrt2, +sqrt2) for {00, 11}
    # (the pair {01, 10} gives (0, 0): each reward +-1/sqrt2 with opposite signs).
    assert count_distinct_groups(2, 2, "grpo").distinct_groups == 2
    assert count_distinct_groups(2, 2, "gdpo").distinct_groups == 3
    # without std, totals (0,1) and (0,2) differ: (0,0), (-.5,.5), (-1,1)
    assert count_distinct_groups(2, 2, "grpo-nostd").distinct_groups == 3
    # K=2, G=4 under GDPO: the two modes first differ here (both cross-checked by brute force above)
    assert (count_distinct_groups(2, 4, "gdpo", "sorted").distinct_groups,
            count_distinct_groups(2, 4, "gdpo", "aligned").distinct_groups) == (14, 16)
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
    assert rows[:2] == [{"rewards": 2, "rollouts": 2, "estimator": "grpo", "compare": "sorted", "distinct_groups": 2},
                        {"rewards": 2, "rollouts": 2, "estimator": "gdpo", "compare": "sorted", "distinct_groups": 3}]
    assert [r["rollouts"] for r in rows] == [2, 2, 3, 3, 4, 4]
    assert main(["analyze", "groups", "--rewards", "1..2", "--rollouts", "4", "--estimator", "grpo-nostd"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "distinct advantage groups (--compare sorted)"
    assert lines[1].split() == ["rewards", "rollouts", "estimator", "distinct_groups", "multisets"]
    assert lines[3].split() == ["2", "4", "grpo-nostd", "10", "35"]


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
