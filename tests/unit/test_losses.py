"""Golden values of the policy losses, KL estimators and aggregation modes (hand-computed)."""

import math

import pytest
import torch

from gdpo_megatron.algorithms.aggregation import AGGREGATIONS, GlobalCounts, aggregate, count_valid
from gdpo_megatron.algorithms.losses import POLICY_LOSSES, LossInputs, PolicyTerms, kl_penalty, policy_loss
from gdpo_megatron.config.loss import LossConfig


def _inputs(ratios, advantages, mask=None, **extra):
    ratios = torch.tensor(ratios, dtype=torch.float64)
    old = torch.full_like(ratios, -1.0)
    logprobs = (old + torch.log(ratios)).requires_grad_(True)
    mask = torch.ones_like(ratios) if mask is None else torch.tensor(mask, dtype=torch.float64)
    return LossInputs(logprobs=logprobs, old_logprobs=old,
                      advantages=torch.tensor(advantages, dtype=torch.float64), mask=mask, **extra)


def test_ppo_asymmetric_clip_golden():
    # r=0.5,A=1: max(-0.5,-0.8)=-0.5 | r=1,A=-1: 1 | r=1.5,A=1: max(-1.5,-1.28)=-1.28 (clipped) | padding
    inputs = _inputs([[0.5, 1.0, 1.5, 7.0]], [[1.0, -1.0, 1.0, 1.0]], mask=[[1, 1, 1, 0]])
    config = LossConfig(type="ppo", clip_low=0.2, clip_high=0.28)
    loss, metrics = policy_loss(inputs, config, GlobalCounts(num_tokens=3, num_sequences=1))
    assert loss.item() == pytest.approx((-0.5 + 1.0 - 1.28) / 3, abs=1e-12)
    assert metrics["clip_fraction"].item() == pytest.approx(1 / 3)
    assert metrics["ratio_min"].item() == pytest.approx(0.5)
    assert metrics["ratio_max"].item() == pytest.approx(1.5)  # the padded 7.0 is ignored
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    # approx KL(old||new), k3: mean of r - 1 - log r
    expected_kl = sum(r - 1 - math.log(r) for r in (0.5, 1.0, 1.5)) / 3
    assert metrics["approx_kl_old"].item() == pytest.approx(expected_kl)
    # Gradient: only unclipped tokens pass it; d(-A r)/d logp = -A r; token-mean over 3.
    loss.backward()
    expected_grad = torch.tensor([[-0.5 / 3, 1.0 / 3, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(inputs.logprobs.grad, expected_grad)


def test_ppo_low_clip_for_negative_advantage():
    # r=0.5, A=-1: max(0.5, 0.8) = 0.8 -> clipped branch, no gradient.
    inputs = _inputs([[0.5]], [-1.0])
    loss, metrics = policy_loss(inputs, LossConfig(clip_low=0.2), GlobalCounts(1, 1))
    assert loss.item() == pytest.approx(0.8)
    assert metrics["clip_fraction"].item() == 1.0


def test_ppo_dual_clip_golden():
    # A=-1: r=5 -> max(5, 1.2)=5, dual bound 3 -> 3 | r=2 -> 2 (under the bound)
    inputs = _inputs([[5.0, 2.0]], [-1.0])
    config = LossConfig(clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    loss, metrics = policy_loss(inputs, config, GlobalCounts(2, 1))
    assert loss.item() == pytest.approx((3.0 + 2.0) / 2)
    assert metrics["dual_clip_fraction"].item() == pytest.approx(0.5)
    no_dual, _ = policy_loss(_inputs([[5.0, 2.0]], [-1.0]), LossConfig(clip_high=0.2), GlobalCounts(2, 1))
    assert no_dual.item() == pytest.approx(3.5)
    # Positive advantages are never dual-clipped: r=5, A=+1 -> max(-5, -1.2) = -1.2.
    positive, _ = policy_loss(_inputs([[5.0]], [1.0]), config, GlobalCounts(1, 1))
    assert positive.item() == pytest.approx(-1.2)


def test_gspo_sequence_ratio_and_gradient():
    # Sequence 0: log ratios 0.1, 0.3 -> s = exp(0.2); sequence 1: one valid token, log ratio -0.4.
    log_r = torch.tensor([[0.1, 0.3], [-0.4, 2.0]], dtype=torch.float64)
    inputs = _inputs(torch.exp(log_r).tolist(), [1.0, 2.0], mask=[[1, 1], [1, 0]])
    wide = LossConfig(type="gspo", gspo_clip_low=0.9, gspo_clip_high=0.9, aggregation="seq-mean-token-mean")
    terms = POLICY_LOSSES.get("gspo")(inputs, wide)
    s0, s1 = math.exp(0.2), math.exp(-0.4)
    torch.testing.assert_close(terms.ratio[0], torch.tensor([s0, s0], dtype=torch.float64))
    assert terms.ratio[1, 0].item() == pytest.approx(s1)
    loss, _ = policy_loss(inputs, wide, GlobalCounts(num_tokens=3, num_sequences=2))
    assert loss.item() == pytest.approx((-1.0 * s0 - 2.0 * s1) / 2)
    # Sequence-level objective: d(-A exp(mean_t d_t))/d logp_t = -A s / |y|, then / num_sequences.
    loss.backward()
    expected = torch.tensor([[-s0 / 2 / 2, -s0 / 2 / 2], [-2.0 * s1 / 2, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(inputs.logprobs.grad, expected)


def test_gspo_tiny_clip_golden():
    # s = exp(0.2) = 1.2214 is clipped to 1 + 4e-4 for A > 0; s = exp(-0.2) to 1 - 3e-4 for A < 0.
    config = LossConfig(type="gspo", aggregation="seq-mean-token-mean")
    inputs = _inputs([[math.exp(0.1), math.exp(0.3)], [math.exp(-0.2), math.exp(-0.2)]], [1.0, -1.0])
    loss, metrics = policy_loss(inputs, config, GlobalCounts(4, 2))
    assert loss.item() == pytest.approx((-(1 + 4e-4) + (1 - 3e-4)) / 2, abs=1e-12)
    assert metrics["clip_fraction"].item() == 1.0


def test_gpg_plain_gradient_with_alpha():
    logprobs = torch.tensor([[-1.0, -2.0]], dtype=torch.float64, requires_grad=True)
    inputs = LossInputs(logprobs=logprobs, old_logprobs=logprobs.detach().clone(),
                        advantages=torch.tensor([0.5], dtype=torch.float64), mask=torch.ones(1, 2))
    loss, _ = policy_loss(inputs, LossConfig(type="gpg"), GlobalCounts(2, 1), gpg_alpha=4 / 3)
    # -A * logp = [0.5, 1.0], times alpha 4/3, token-mean
    assert loss.item() == pytest.approx((0.5 + 1.0) * 4 / 3 / 2)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.full((1, 2), -0.5 * 4 / 3 / 2, dtype=torch.float64))
    off, _ = policy_loss(inputs, LossConfig(type="gpg", gpg_correction=False), GlobalCounts(2, 1), gpg_alpha=4 / 3)
    assert off.item() == pytest.approx(0.75)


@pytest.mark.parametrize("kind,expected", [("k1", 0.5), ("k2", 0.125), ("k3", math.exp(-0.5) - 1 + 0.5)])
def test_kl_estimators_golden(kind, expected):
    value = kl_penalty(torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-1.5], dtype=torch.float64), kind)
    assert value.item() == pytest.approx(expected)


def test_kl_and_entropy_enter_the_loss():
    # r = 1 everywhere, A = 0: the surrogate is 0, the loss is kl_coef * k3 - entropy_coef * H.
    inputs = _inputs([[1.0, 1.0]], [0.0], ref_logprobs=torch.tensor([[-1.5, -1.0]], dtype=torch.float64),
                     entropy=torch.tensor([[2.0, 4.0]], dtype=torch.float64))
    config = LossConfig(kl_coef=0.1, kl_type="k3", entropy_coef=0.01)
    loss, metrics = policy_loss(inputs, config, GlobalCounts(2, 1))
    k3 = math.exp(-0.5) - 1 + 0.5
    assert loss.item() == pytest.approx((0.1 * k3 - 0.01 * 2.0 - 0.01 * 4.0) / 2)
    assert metrics["kl_ref"].item() == pytest.approx(k3 / 2)
    assert metrics["entropy"].item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(_inputs([[1.0]], [0.0]), config, GlobalCounts(1, 1))


VALUES = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.float64)


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", 10 / 4),               # all valid tokens of the batch
    ("seq-mean-token-mean", (2 + 4) / 2),  # per-sequence means 2 and 4
    ("seq-mean-token-sum", (6 + 4) / 2),   # per-sequence sums 6 and 4
    ("seq-mean-token-sum-norm", 10 / (2 * 4)),  # Dr.GRPO: sum / (sequences * constant 4)
])
def test_aggregation_golden(mode, expected):
    assert count_valid(MASK) == (4, 2)
    counts = GlobalCounts(num_tokens=4, num_sequences=2, norm_length=4)
    assert aggregate(VALUES, MASK, mode, counts).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_split_batch_sums_to_full_batch(mode):
    """Global normalization: pieces (micro-batches / DP ranks) summed equal the full batch, gradients too."""
    torch.manual_seed(0)
    values = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(6, 5) > 0.3).to(torch.float64)
    mask[4] = 0  # an empty response: counts as no sequence
    tokens, sequences = count_valid(mask)
    counts = GlobalCounts(tokens, sequences, norm_length=5)
    full = aggregate(values, mask, mode, counts)
    (full_grad,) = torch.autograd.grad(full, values)
    pieces = sum(aggregate(values[i:j], mask[i:j], mode, counts) for i, j in [(0, 1), (1, 4), (4, 6)])
    (piece_grad,) = torch.autograd.grad(pieces, values)
    torch.testing.assert_close(pieces, full)
    torch.testing.assert_close(piece_grad, full_grad)


def test_unknown_aggregation_and_registry_extension():
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(VALUES, MASK, "token-avg", GlobalCounts(4, 2))
    assert {"ppo", "gspo", "gpg"} <= set(POLICY_LOSSES.names())
    from gdpo_megatron.config.errors import ConfigError
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.recipe_checks import check_recipe
    recipe = RecipeConfig()
    recipe.algorithm.loss = LossConfig(type="ppo2")
    with pytest.raises(ConfigError, match="algorithm.loss.type: unknown loss 'ppo2'"):
        check_recipe(recipe)


def test_empty_batch_gives_zero_not_nan():
    inputs = _inputs([[1.3, 0.7]], [1.0], mask=[[0, 0]])
    loss, _ = policy_loss(inputs, LossConfig(), GlobalCounts(0, 0))
    assert loss.item() == 0.0


def _bigram_loss(model, batch, config):
    """The train step's loss path: token-aligned logprobs of a bigram model, global counts of the mask."""
    from gdpo_megatron.policy.train_step import _token_aligned

    ids = batch.input_ids
    logits = model(ids[:, :-1])
    logprobs = _token_aligned(torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1))
    probs = torch.softmax(logits, -1)
    entropy = _token_aligned(-(probs * torch.log_softmax(logits, -1)).sum(-1))
    tokens, sequences = count_valid(batch.response_mask)
    counts = GlobalCounts(num_tokens=tokens, num_sequences=sequences, norm_length=6.0)
    inputs = LossInputs(logprobs=logprobs, old_logprobs=batch.old_logprobs, advantages=batch.advantages,
                        mask=batch.response_mask, ref_logprobs=batch.ref_logprobs, entropy=entropy)
    return policy_loss(inputs, config, counts)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_an_overlong_filtered_rollout_changes_neither_loss_nor_gradient(aggregation):
    from gdpo_megatron.policy.batch import build_policy_batch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11)).double()
    prompts, responses = [[1, 2], [3], [4, 5, 6]], [[7, 8, 9], [2, 2], [10]]
    long_prompt, long_response = [5, 4], [3, 1, 4, 1, 5, 9, 2, 6]  # truncated at max_new_tokens
    config = LossConfig(type="ppo", aggregation=aggregation, kl_coef=0.1, entropy_coef=0.01)

    def prepared(batch, advantages):
        with torch.no_grad():
            full = torch.log_softmax(model(batch.input_ids[:, :-1]), -1)
            current = torch.nn.functional.pad(full.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1), (1, 0))
        batch.advantages = torch.tensor(advantages, dtype=torch.float64)
        batch.old_logprobs = (current + 0.05 * torch.randn_like(current)) * batch.response_mask
        batch.ref_logprobs = (current - 0.1) * batch.response_mask
        return batch

    torch.manual_seed(1)
    alone = prepared(build_policy_batch(prompts, responses), [1.0, -0.5, 0.25])
    torch.manual_seed(1)
    # The filtered rollout even carries a nonzero advantage: only its mask keeps it out.
    with_filtered = prepared(build_policy_batch(prompts + [long_prompt], responses + [long_response]),
                             [1.0, -0.5, 0.25, 2.0])
    with_filtered = with_filtered.with_loss_rows(torch.tensor([True, True, True, False]))
    width = alone.input_ids.shape[1]
    # same noise for the shared rows (drawn per element in row order, wider batch differs): copy them
    with_filtered.old_logprobs[:3].zero_()
    with_filtered.old_logprobs[:3, :width] = alone.old_logprobs

    results = []
    for batch in (alone, with_filtered):
        model.zero_grad()
        loss, metrics = _bigram_loss(model, batch, config)
        loss.backward()
        results.append((loss.detach(), metrics, [p.grad.clone() for p in model.parameters()]))
    (loss_a, metrics_a, grads_a), (loss_b, metrics_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-12)
    for grad_a, grad_b in zip(grads_a, grads_b):
        torch.testing.assert_close(grad_b, grad_a, rtol=0, atol=1e-12)
    for name in ("pg_loss", "kl_ref", "entropy", "clip_fraction", "ratio_max", "ratio_min"):
        torch.testing.assert_close(metrics_b[name], metrics_a[name], rtol=0, atol=1e-12)
    # and without the mask the same rollout does change the loss: the test can fail
    unmasked = prepared(build_policy_batch(prompts + [long_prompt], responses + [long_response]),
                        [1.0, -0.5, 0.25, 2.0])
    unmasked.old_logprobs[:3].zero_()
    unmasked.old_logprobs[:3, :width] = alone.old_logprobs
    assert abs(float(_bigram_loss(model, unmasked, config)[0].detach()) - float(loss_a)) > 1e-3
