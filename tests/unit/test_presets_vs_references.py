"""The `trl`, `verl` and `nemo_rl` presets against the reference implementations' arithmetic.

Each `*_reference` below is the GDPO advantage computation of one reference, written out from
its formulas (TRL 1.16 `GRPOTrainer` with `multi_objective_aggregation="normalize_then_sum"`;
verl 0.9.1 `compute_gdpo_outcome_advantage` + `masked_whiten`; NeMo-RL's
`GDPOAdvantageEstimator` + `calculate_baseline_and_std_per_prompt` as its shipped GDPO recipes
configure it, `normalize_rewards: true`, `use_leave_one_out_baseline: false`). They run in the
dtype given: float32 is what the references compute in, float64 shows that the remaining
differences are the references' float32 round-off.
"""

from __future__ import annotations

import pytest
import torch

from gdpo_megatron.algorithms.advantages import compute_advantages
from gdpo_megatron.config.algorithm import AlgorithmConfig, RewardSpec

BINARY_TOL = 5e-6
WEIGHT_CHOICES = (1.0, 0.5, 0.25, 2.0)


# ------------------------------------------------------------------------------ references

def _nanstd(x: torch.Tensor, dim=None, keepdim=False) -> torch.Tensor:
    """TRL's nanstd: Bessel-corrected std of the non-NaN values; NaN with fewer than two."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = var * torch.where(count > 1, count / (count - 1), torch.full_like(var, float("nan")))
    std = var.sqrt()
    return std if keepdim else std.squeeze(dim)


def trl_reference(rewards: torch.Tensor, group_size: int, weights, dtype) -> torch.Tensor:
    """rewards [N, K] (NaN = reward function returned None), contiguous groups of `group_size`."""
    n, k = rewards.shape
    x = rewards.to(dtype)
    w = torch.tensor(weights, dtype=torch.float32).to(dtype)
    unscorable = torch.isnan(x).all(dim=1)
    grouped = x.view(-1, group_size, k)
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
    std_k = _nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean_k)
    per_reward = ((grouped - mean_k) / (std_k + 1e-4)).view(n, k)
    total = (per_reward * w).nansum(dim=1)
    total[unscorable] = float("nan")
    std = _nanstd(total) if n > 1 else torch.zeros(())
    advantages = (total - torch.nanmean(total)) / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def verl_reference(rewards: torch.Tensor, group_ids: torch.Tensor, mask: torch.Tensor, weights, dtype) -> torch.Tensor:
    """Per-reward GRPO (size-1 group: mean 0, std 1; else mean, unbiased std, + 1e-6), weighted
    sum, then masked per-token whitening; returns the value of each rollout's first token."""
    n, k = rewards.shape
    x = rewards.to(dtype)
    mask = mask.to(dtype)
    total = torch.zeros(n, dtype=dtype)
    for j in range(k):
        scores = x[:, j].clone()
        for g in group_ids.unique():
            members = group_ids == g
            values = x[members, j]
            if values.numel() == 1:
                mean, std = torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)
            else:
                mean, std = values.mean(), values.std()
            scores[members] = (values - mean) / (std + 1e-6)
        total = total + torch.tensor(weights[j], dtype=torch.float32).to(dtype) * scores
    tokens = total[:, None] * mask
    count = mask.sum()
    mean = (tokens * mask).sum() / (count + 1e-8)
    var = (((tokens - mean) ** 2) * mask).sum() / (count + 1e-8) * (count / (count - 1))
    whitened = (tokens - mean) * torch.rsqrt(var + 1e-8) * mask
    return whitened[:, 0]


def nemo_rl_reference(rewards: torch.Tensor, group_ids: torch.Tensor, weights, dtype,
                      leave_one_out: bool = False) -> torch.Tensor:
    """Per-reward baseline and std per prompt from running sums of x and x^2 (optionally leave
    one out), divide by (std + 1e-6) only where std > 0, weighted sum, then (x - mean) / std
    over the batch (only x - mean if std = 0)."""
    n, k = rewards.shape
    x = rewards.to(dtype)
    total = torch.zeros(n, dtype=dtype)
    for j in range(k):
        r = x[:, j]
        baseline = torch.zeros_like(r)
        std = torch.zeros_like(r)
        for g in group_ids.unique():
            idx = torch.nonzero(group_ids == g).squeeze(1)
            size = idx.numel()
            if size <= 1:
                baseline[idx] = r[idx]
                continue
            matrix = (1 - torch.eye(size, dtype=dtype)) if leave_one_out else torch.ones(size, size, dtype=dtype)
            count = torch.tensor(float(size - int(leave_one_out)), dtype=dtype)
            mean = matrix @ r[idx] / count
            mean_sq = matrix @ r[idx].pow(2) / count
            baseline[idx] = mean
            std[idx] = ((mean_sq - mean.square()) * (count / (count - 1))).sqrt().nan_to_num(0)
        centered = r - baseline
        positive = std > 0
        centered[positive] = centered[positive] / (std[positive] + 1e-6)
        total = total + weights[j] * centered
    batch_std = total.std()
    return (total - total.mean()) / batch_std if batch_std > 0 else total - total.mean()


# ------------------------------------------------------------------------------ batches

def _ours(rewards, group_ids, weights, preset, mask=None, **overrides) -> torch.Tensor:
    specs = [RewardSpec(name=f"r{j}", weight=w) for j, w in enumerate(weights)]
    config = AlgorithmConfig(estimator="gdpo", preset=preset, rewards=specs, **overrides)
    return compute_advantages(rewards, group_ids, config, mask).advantages.double()


def _random_groups(gen: torch.Generator, num_groups: int, singletons: bool) -> torch.Tensor:
    low = 1 if singletons else 2
    sizes = torch.randint(low, 17, (num_groups,), generator=gen)
    ids = torch.repeat_interleave(torch.arange(num_groups) * 7 + 3, sizes)  # arbitrary id values
    return ids[torch.randperm(ids.numel(), generator=gen)]  # members need not be contiguous


def _binary(gen, n, k, constant_groups_of=None) -> torch.Tensor:
    rewards = (torch.rand(n, k, generator=gen) < torch.rand(1, k, generator=gen)).float()
    if constant_groups_of is not None:  # force a few groups to one value per reward
        ids = constant_groups_of
        for g in ids.unique()[::4]:
            rewards[ids == g] = rewards[ids == g][0]
    return rewards


def _weights(gen, k):
    return [WEIGHT_CHOICES[int(i)] for i in torch.randint(0, len(WEIGHT_CHOICES), (k,), generator=gen)]


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_trl_preset_matches_trl_on_binary_rewards_with_missing_values(seed):
    gen = torch.Generator().manual_seed(seed)
    k = 1 + seed % 3
    group_size = int(torch.randint(2, 17, (1,), generator=gen)) if seed % 6 else 1
    n = group_size * int(torch.randint(3, 12, (1,), generator=gen))
    group_ids = torch.arange(n) // group_size
    rewards = _binary(gen, n, k, group_ids)
    missing = torch.rand(n, k, generator=gen) < 0.15
    missing[torch.randint(0, n, (2,), generator=gen)] = True  # unscorable rows
    rewards[missing] = float("nan")
    weights = _weights(gen, k)
    expected = trl_reference(rewards, group_size, weights, torch.float32).double()
    got = _ours(rewards, group_ids, weights, "trl")
    assert (got - expected).abs().max() <= BINARY_TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_verl_preset_matches_verl_on_binary_rewards(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    k = 1 + seed % 3
    group_ids = _random_groups(gen, int(torch.randint(2, 10, (1,), generator=gen)), singletons=seed % 2 == 0)
    n = group_ids.numel()
    rewards = _binary(gen, n, k, group_ids)
    lengths = torch.randint(1, 9, (n,), generator=gen)
    mask = (torch.arange(8)[None, :] < lengths[:, None]).float()
    weights = _weights(gen, k)
    expected = verl_reference(rewards, group_ids, mask, weights, torch.float32).double()
    got = _ours(rewards, group_ids, weights, "verl", mask)
    assert (got - expected).abs().max() <= BINARY_TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_nemo_rl_preset_matches_nemo_rl_shipped_gdpo_config_on_binary_rewards(seed):
    gen = torch.Generator().manual_seed(200 + seed)
    k = 1 + seed % 3
    group_ids = _random_groups(gen, int(torch.randint(2, 10, (1,), generator=gen)), singletons=seed % 2 == 0)
    rewards = _binary(gen, group_ids.numel(), k, group_ids)
    weights = _weights(gen, k)
    expected = nemo_rl_reference(rewards, group_ids, weights, torch.float32).double()
    got = _ours(rewards, group_ids, weights, "nemo_rl")
    assert (got - expected).abs().max() <= BINARY_TOL


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_nemo_rl_leave_one_out_is_an_explicit_option(seed):
    gen = torch.Generator().manual_seed(300 + seed)
    k = 1 + seed % 3
    group_ids = _random_groups(gen, int(torch.randint(2, 10, (1,), generator=gen)), singletons=seed % 2 == 0)
    rewards = _binary(gen, group_ids.numel(), k, group_ids)
    weights = _weights(gen, k)
    expected = nemo_rl_reference(rewards, group_ids, weights, torch.float64, leave_one_out=True)
    got = _ours(rewards, group_ids, weights, "nemo_rl", group_baseline="leave_one_out", group_std="leave_one_out")
    assert (got - expected).abs().max() <= BINARY_TOL
    # and the preset itself is not leave-one-out (NeMo-RL's GDPO recipes turn it off)
    assert not torch.allclose(_ours(rewards, group_ids, weights, "nemo_rl"), expected, atol=1e-3)


@pytest.mark.parametrize("seed", range(4))
def test_continuous_rewards_differ_only_by_the_references_float32_round_off(seed):
    """In float64 the reference arithmetic agrees with each preset to ~1e-6 (our float32
    output); whatever larger difference the float32 references show is their round-off."""
    gen = torch.Generator().manual_seed(400 + seed)
    k = 1 + seed % 3
    weights = _weights(gen, k)
    group_size = int(torch.randint(2, 17, (1,), generator=gen))
    n = group_size * 6
    contiguous = torch.arange(n) // group_size
    rewards = torch.rand(n, k, generator=gen) * 3 - 1
    mask = (torch.arange(8)[None, :] < torch.randint(1, 9, (n,), generator=gen)[:, None]).float()
    cases = [
        (trl_reference(rewards, group_size, weights, torch.float64), _ours(rewards, contiguous, weights, "trl")),
        (verl_reference(rewards, contiguous, mask, weights, torch.float64),
         _ours(rewards, contiguous, weights, "verl", mask)),
        (nemo_rl_reference(rewards, contiguous, weights, torch.float64), _ours(rewards, contiguous, weights, "nemo_rl")),
    ]
    for reference64, ours in cases:
        assert (ours - reference64).abs().max() <= 2e-6


def test_constant_group_of_0_3_gets_a_nonzero_advantage_only_from_float32_round_off():
    """A group whose reward is 0.3 everywhere carries no signal. In float32 its mean is not
    exactly 0.3, so TRL divides that residue by (0 + 1e-4) and verl's/NeMo-RL's batch step
    then scales it like a real signal; this stage detects the constant group exactly (0)."""
    rewards = torch.tensor([[0.3]] * 6 + [[1.0], [0.0], [1.0], [0.0], [0.0], [1.0]])
    group_ids = torch.tensor([0] * 6 + [1] * 6)
    mask = torch.ones(12, 4)
    ours = {p: _ours(rewards, group_ids, [1.0], p, mask if p == "verl" else None) for p in ("trl", "verl", "nemo_rl")}
    for preset in ours:
        assert ours[preset][:6].eq(0).all()
    trl32 = trl_reference(rewards, 6, [1.0], torch.float32)
    assert trl32[:6].abs().max() > 1e-4  # the residue becomes a visible advantage
    assert trl_reference(rewards, 6, [1.0], torch.float64)[:6].abs().max() < 1e-9
    # the varying group is the same everywhere
    assert (ours["trl"][6:] - trl32[6:].double()).abs().max() <= 5e-4
    # verl: the group's residue / (0 + 1e-6) survives into the token whitening
    mixed = torch.tensor([[0.3]] * 6 + [[1.0], [0.0]])
    mixed_ids = torch.tensor([0] * 6 + [1] * 2)
    verl32 = verl_reference(mixed, mixed_ids, torch.ones(8, 2), [1.0], torch.float32)
    assert verl32[:6].abs().max() > 1e-3
    assert verl_reference(mixed, mixed_ids, torch.ones(8, 2), [1.0], torch.float64)[:6].abs().max() < 1e-6
    assert _ours(mixed, mixed_ids, [1.0], "verl", torch.ones(8, 2))[:6].eq(0).all()
    # NeMo-RL: a batch of one constant group of nine 0.3's; float32 E[x^2] - E[x]^2 leaves a
    # positive std of ~1e-8, and the batch step scales the residue to advantages of order one
    nine = torch.full((9, 1), 0.3)
    nine_ids = torch.zeros(9, dtype=torch.long)
    assert nemo_rl_reference(nine, nine_ids, [1.0], torch.float32).abs().max() > 0.5
    for preset in ("trl", "nemo_rl"):
        assert _ours(nine, nine_ids, [1.0], preset).eq(0).all()
