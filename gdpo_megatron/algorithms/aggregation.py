"""Reducing per-token loss terms to one scalar, normalized by counts over the WHOLE batch.

The train step splits a batch over data-parallel ranks and micro-batches, computes this
reduction on each piece and SUMS the pieces (gradients are summed over micro-batches and
all-reduced with SUM over DP). That sum equals the full-batch loss only if every piece
divides by the same global denominator, so the denominators are arguments here
(`GlobalCounts`), never computed from the local piece. Per-sequence lengths are local
facts (a sequence never straddles pieces), so they are computed here. See docs/losses.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class GlobalCounts:
    """Denominators shared by every micro-batch of one optimizer step (one mini-batch).

    num_tokens: valid (response) tokens over all DP ranks and micro-batches.
    num_sequences: sequences with at least one valid token, over all DP ranks and micro-batches.
    norm_length: the constant of seq-mean-token-sum-norm (Dr.GRPO): usually the maximum
        response length of the run, so it is the same for every batch.
    """

    num_tokens: float
    num_sequences: float
    norm_length: float = 1.0

    def __post_init__(self) -> None:
        if self.num_tokens < 0 or self.num_sequences < 0 or self.norm_length <= 0:
            raise ValueError(f"GlobalCounts needs num_tokens >= 0, num_sequences >= 0, norm_length > 0; got {self}")


def _safe(denominator: float) -> float:
    # An empty mini-batch (all responses empty) contributes a zero loss, not NaN.
    return denominator if denominator > 0 else 1.0


def _token_mean(values: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts) -> torch.Tensor:
    return (values * mask).sum() / _safe(counts.num_tokens)


def _seq_mean_token_mean(values: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts) -> torch.Tensor:
    per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / _safe(counts.num_sequences)


def _seq_mean_token_sum(values: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts) -> torch.Tensor:
    return (values * mask).sum() / _safe(counts.num_sequences)


def _seq_mean_token_sum_norm(values: torch.Tensor, mask: torch.Tensor, counts: GlobalCounts) -> torch.Tensor:
    return (values * mask).sum() / (_safe(counts.num_sequences) * counts.norm_length)


_REDUCERS: dict[str, Callable[[torch.Tensor, torch.Tensor, GlobalCounts], torch.Tensor]] = {
    "token-mean": _token_mean,
    "seq-mean-token-mean": _seq_mean_token_mean,
    "seq-mean-token-sum": _seq_mean_token_sum,
    "seq-mean-token-sum-norm": _seq_mean_token_sum_norm,
}


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, counts: GlobalCounts) -> torch.Tensor:
    """This piece's share of the batch loss: values and mask are [B, T]; mask is 1 on response tokens."""
    try:
        reducer = _REDUCERS[mode]
    except KeyError:
        raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}") from None
    return reducer(values, mask.to(values.dtype), counts)


def count_valid(mask: torch.Tensor) -> tuple[int, int]:
    """(valid tokens, sequences with at least one valid token) of a local [B, T] mask."""
    per_seq = mask.sum(-1)
    return int(per_seq.sum().item()), int((per_seq > 0).sum().item())
