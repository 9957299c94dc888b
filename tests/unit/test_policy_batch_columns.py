"""Response-coordinate values (engine logprobs, per-token advantages) land on their own token columns."""

from __future__ import annotations

import random

import torch

from gdpo_megatron.policy.batch import build_policy_batch


def reference_columns(prompt_ids, response_values, width):
    out = torch.zeros(len(prompt_ids), width)
    for i, (prompt, values) in enumerate(zip(prompt_ids, response_values)):
        for j, value in enumerate(values):
            out[i, len(prompt) + j] = value
    return out


def test_a_row_ending_at_the_last_column_keeps_its_last_value():
    # Row 0 (17 + 15 tokens) ends at column 31, the batch's last; row 1 (15 + 16) has the longest
    # response, so response coordinate 15 is padding for row 0 with no column of its own.
    prompts = [[5] * 17, [6] * 15]
    responses = [[7] * 15, [8] * 16]
    batch = build_policy_batch(prompts, responses)
    assert batch.input_ids.shape == (2, 32)
    engine = [[-0.01 * (k + 1) for k in range(15)], [-0.02 * (k + 1) for k in range(16)]]
    dense = batch.pad_response_values(engine)
    assert dense[0, 31].item() == torch.tensor(-0.15).item()  # the end-of-sequence token's logprob
    assert torch.equal(dense, reference_columns(prompts, engine, 32))

    token_advantages = torch.tensor([[0.5] * 15 + [0.0], [-1.0] * 16])
    batch.set_advantages(torch.tensor([0.5, -1.0]), token_advantages)
    assert batch.advantages[0, 31].item() == 0.5  # the last token still gets its rollout's advantage
    assert torch.equal(batch.advantages, torch.tensor([[0.5], [-1.0]]) * batch.response_mask)


def test_random_lengths_match_the_reference_placement():
    rng = random.Random(0)
    for _ in range(200):
        rows = rng.randint(1, 6)
        prompts = [[1] * rng.randint(1, 8) for _ in range(rows)]
        responses = [[2] * rng.randint(0, 8) for _ in range(rows)]
        values = [[rng.uniform(-3.0, -0.01) for _ in r] for r in responses]
        batch = build_policy_batch(prompts, responses)
        expected = reference_columns(prompts, values, batch.input_ids.shape[1])
        assert torch.equal(batch.pad_response_values(values), expected)
        assert torch.equal(expected != 0, batch.response_mask != 0)
