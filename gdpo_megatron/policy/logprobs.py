"""Logprobs and entropy of sampled tokens from vocab-parallel logits, without gathering the vocabulary.

Under tensor parallelism each rank holds logits for a contiguous slice of the (padded)
vocabulary, [B, T, V/TP]. The softmax only needs three reductions over the full
vocabulary: the max (for stability), the sum of exponentials, and, for the entropy,
sum_v p_v * logit_v. Each is computed on the local slice and all-reduced over the TP
group, so memory stays at one slice and communication at O(B*T) numbers.

Autograd: the sums go through megatron's `reduce_from_tensor_model_parallel_region`
(forward all-reduce, backward identity). Every TP rank then holds the same logprob and
backpropagates the same upstream gradient into its own slice, which is the exact local
gradient of the global softmax. The max is a constant shift (detached).

Everything is computed in float32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist


@dataclass
class TokenLogprobs:
    logprobs: torch.Tensor  # [B, T] fp32: log p(target_t | prefix)
    entropy: Optional[torch.Tensor]  # [B, T] fp32: entropy of the next-token distribution


def _tp_group(group):
    if group is not None:
        return group
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_group()


def _all_reduce_with_grad(tensor: torch.Tensor, group) -> torch.Tensor:
    from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region

    return reduce_from_tensor_model_parallel_region(tensor, group=group)


def vocab_parallel_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    vocab_size: Optional[int] = None,
    temperature: float = 1.0,
    with_entropy: bool = True,
    tp_group=None,
) -> TokenLogprobs:
    """logits: [B, T, V_local], this rank's vocab slice; targets: [B, T] token ids (full vocab).

    vocab_size: the tokenizer's real vocabulary; padded rows beyond it (TP padding) are
        excluded from the softmax. None: every row is real.
    temperature: logits are divided by it, matching how the sampler drew the tokens.
    """
    group = _tp_group(tp_group)
    tp_size = dist.get_world_size(group) if dist.is_initialized() else 1
    tp_rank = dist.get_rank(group) if dist.is_initialized() else 0
    local_vocab = logits.shape[-1]
    start = tp_rank * local_vocab
    end = start + local_vocab

    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if vocab_size is not None and end > vocab_size:
        padded = torch.arange(start, end, device=logits.device) >= vocab_size
        logits = logits.masked_fill(padded, float("-inf"))

    local_max = logits.detach().max(dim=-1).values
    if tp_size > 1:
        dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - local_max.unsqueeze(-1)

    in_slice = (targets >= start) & (targets < end)
    local_index = (targets - start).clamp(0, local_vocab - 1)
    target_shifted = shifted.gather(-1, local_index.unsqueeze(-1)).squeeze(-1)
    target_shifted = torch.where(in_slice, target_shifted, torch.zeros_like(target_shifted))

    exp = torch.exp(shifted)
    sum_exp = exp.sum(-1)
    if tp_size > 1:
        sum_exp = _all_reduce_with_grad(sum_exp, group)
        target_shifted = _all_reduce_with_grad(target_shifted, group)
    log_sum_exp = torch.log(sum_exp)
    logprobs = target_shifted - log_sum_exp

    entropy = None
    if with_entropy:
        # H = log Z - sum_v p_v * shifted_v; padded rows have p = 0 and shifted = -inf, so zero them first.
        weighted = torch.where(exp > 0, exp * shifted, torch.zeros_like(shifted)).sum(-1)
        if tp_size > 1:
            weighted = _all_reduce_with_grad(weighted, group)
        entropy = log_sum_exp - weighted / sum_exp
    return TokenLogprobs(logprobs=logprobs, entropy=entropy)


def reference_logprobs(logits_full: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> TokenLogprobs:
    """Single-rank full-softmax computation (for tests and as the definition)."""
    log_p = torch.log_softmax(logits_full.float() / temperature, dim=-1)
    logprobs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return TokenLogprobs(logprobs=logprobs, entropy=entropy)
