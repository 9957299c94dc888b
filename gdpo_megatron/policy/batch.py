"""The batch format of the Megatron policy, and its split into mini- and micro-batches.

`PolicyBatch` is the contract between the trainer / generation side and the policy:
one data-parallel rank's rollouts (every TP/PP rank of that DP replica receives the same
batch). Row i is one rollout: its prompt tokens followed by its response tokens,
right-padded to a common length T.

All per-token tensors are TOKEN-ALIGNED with `input_ids`: entry [i, t] is about token
input_ids[i, t] (its logprob given input_ids[i, :t], whether it is a response token, its
advantage). Column 0 can never be a response token (it has no prefix).

    input_ids      [B, T] int64   prompt + response, right-padded (pad id irrelevant)
    response_mask  [B, T] float32 1.0 on response tokens that enter the loss, else 0.0
                                  (prompt, padding, tokens the trainer excludes such as
                                  overlong-filtered responses)
    advantages     [B] or [B, T] float32  one per rollout (broadcast to its tokens) or per token
    old_logprobs   [B, T] float32 | None  logprobs of the policy before this step's updates;
                                  None lets `MegatronPolicy.train` compute them first
    ref_logprobs   [B, T] float32 | None  reference policy's logprobs; required when
                                  algorithm.loss.kl_coef > 0 (`compute_logprobs(batch, reference=True)`)

Positions are 0..T-1 for every row; attention is causal, so right padding never
influences valid positions.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Iterator, Optional

import torch

from gdpo_megatron.partition import even_ranges


@dataclass
class PolicyBatch:
    input_ids: torch.Tensor
    response_mask: torch.Tensor
    advantages: Optional[torch.Tensor] = None
    old_logprobs: Optional[torch.Tensor] = None
    ref_logprobs: Optional[torch.Tensor] = None
    prompt_lengths: Optional[torch.Tensor] = None  # [B] int64, set by build_policy_batch
    response_lengths: Optional[torch.Tensor] = None  # [B] int64, set by build_policy_batch

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.input_ids.dim() != 2:
            raise ValueError(f"PolicyBatch.input_ids must be [B, T], got shape {tuple(self.input_ids.shape)}")
        shape = tuple(self.input_ids.shape)
        for name in ("response_mask", "old_logprobs", "ref_logprobs"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"PolicyBatch.{name} must have the shape of input_ids {shape}, got {tuple(value.shape)}")
        if self.advantages is not None and tuple(self.advantages.shape) not in (shape[:1], shape):
            raise ValueError(f"PolicyBatch.advantages must be [B]={shape[:1]} or [B, T]={shape}, "
                             f"got {tuple(self.advantages.shape)}")
        if shape[1] > 0 and bool((self.response_mask[:, 0] != 0).any()):
            raise ValueError("PolicyBatch.response_mask[:, 0] must be 0: the first token has no prefix to predict it from")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def rows(self, start: int, end: int) -> "PolicyBatch":
        """Rows [start, end) (views, no copy)."""
        sliced = {f.name: (getattr(self, f.name)[start:end] if getattr(self, f.name) is not None else None)
                  for f in fields(self)}
        return PolicyBatch(**sliced)

    def trimmed(self, length: int) -> "PolicyBatch":
        """The first `length` columns (per-sequence advantages are kept as they are)."""
        def cut(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if x is None else x[:, :length]

        advantages = self.advantages if self.advantages is None or self.advantages.dim() == 1 else cut(self.advantages)
        return replace(self, input_ids=cut(self.input_ids), response_mask=cut(self.response_mask),
                       old_logprobs=cut(self.old_logprobs), ref_logprobs=cut(self.ref_logprobs), advantages=advantages)

    # --- response coordinates: column j of a response-local [B, R] tensor is response token j ---

    def _response_index(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token column of response coordinate j per row, and where j is one of the row's tokens.

        The column is meaningful only where `valid`: past a row's own response it may point beyond
        the batch (the row is then not the widest one).
        """
        if self.prompt_lengths is None or self.response_lengths is None:
            raise ValueError("this PolicyBatch was not built by build_policy_batch: prompt/response lengths unknown")
        j = torch.arange(width).unsqueeze(0)
        valid = j < self.response_lengths.unsqueeze(1)
        return self.prompt_lengths.unsqueeze(1) + j, valid

    def response_mask_for_advantages(self) -> torch.Tensor:
        """[B, R] float32 mask in response coordinates (R = longest response): 1 on response tokens."""
        width = int(self.response_lengths.max().item()) if len(self) else 0
        _, valid = self._response_index(width)
        return valid.to(torch.float32)

    def to_token_columns(self, values: torch.Tensor) -> torch.Tensor:
        """Response-coordinate [B, R] values placed at their token columns of a [B, T] zero tensor."""
        index, valid = self._response_index(values.shape[1])
        out = torch.zeros(self.input_ids.shape, dtype=torch.float32)
        rows = torch.arange(len(self)).unsqueeze(1).expand_as(index)
        # Only a row's own tokens are written. Padding entries have no column of their own: a row
        # ending at the last column, beside a row with a shorter prompt and a longer response, has
        # padding entries past the batch, and writing them anywhere would overwrite real values.
        out[rows[valid], index[valid]] = values.to(torch.float32)[valid]
        return out

    def pad_response_values(self, values: list[list[float]]) -> torch.Tensor:
        """Per-response-token lists (e.g. the engine's sampling logprobs) as a token-aligned [B, T] tensor."""
        width = max((len(v) for v in values), default=0)
        dense = torch.zeros(len(values), width, dtype=torch.float32)
        for i, row in enumerate(values):
            dense[i, : len(row)] = torch.tensor(row, dtype=torch.float32)
        return self.to_token_columns(dense)

    def set_advantages(self, advantages: torch.Tensor, token_advantages: Optional[torch.Tensor] = None) -> None:
        """Advantages from the advantage stage: [B] per rollout, or per token in response coordinates."""
        self.advantages = (self.to_token_columns(token_advantages) if token_advantages is not None
                           else advantages.to(torch.float32))
        self.validate()

    def with_loss_rows(self, keep: Optional[torch.Tensor]) -> "PolicyBatch":
        """The batch with rows where `keep` [B] is False taken out of the loss (response mask 0).

        The loss, its global token and sequence counts and every loss metric then ignore those
        rows exactly as if they were not in the batch. `keep=None` keeps every row.
        """
        if keep is None:
            return self
        keep = torch.as_tensor(keep, dtype=torch.bool)
        if keep.shape != (len(self),):
            raise ValueError(f"with_loss_rows: keep must be [B] = [{len(self)}], got shape {tuple(keep.shape)}")
        return replace(self, response_mask=self.response_mask * keep.unsqueeze(1).to(self.response_mask.dtype))

    def used_length(self) -> int:
        """Columns up to the last response token of any row (the rest is padding for this batch)."""
        any_valid = (self.response_mask != 0).any(0)
        idx = torch.nonzero(any_valid)
        return int(idx[-1].item()) + 1 if len(idx) else 1


def build_policy_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int = 0) -> PolicyBatch:
    """Token ids of prompts and responses -> a right-padded PolicyBatch (advantages/logprobs set later)."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"build_policy_batch: {len(prompt_ids)} prompts but {len(response_ids)} responses")
    for i, prompt in enumerate(prompt_ids):
        if not prompt:
            raise ValueError(f"build_policy_batch: rollout {i} has an empty prompt (the first response token needs a prefix)")
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(lengths, default=1)
    input_ids = torch.full((len(lengths), width), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(lengths), width, dtype=torch.float32)
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[i, : lengths[i]] = torch.tensor(list(prompt) + list(response), dtype=torch.int64)
        mask[i, len(prompt): lengths[i]] = 1.0
    return PolicyBatch(input_ids=input_ids, response_mask=mask,
                       prompt_lengths=torch.tensor([len(p) for p in prompt_ids], dtype=torch.int64),
                       response_lengths=torch.tensor([len(r) for r in response_ids], dtype=torch.int64))


def split_even(total: int, parts: int) -> list[tuple[int, int]]:
    """Mini-batch bounds: like `even_ranges`, but every part must get at least one row."""
    if parts < 1 or parts > max(total, 1):
        raise ValueError(f"cannot split {total} rows into {parts} parts")
    return even_ranges(total, parts)


def mini_batches(batch: PolicyBatch, num_mini_batches: int) -> list[PolicyBatch]:
    """Contiguous chunks, one per optimizer step; every DP rank must pass the same count."""
    return [batch.rows(a, b) for a, b in split_even(len(batch), num_mini_batches)]


def micro_batches(batch: PolicyBatch, micro_batch_size: int, *, fixed_length: Optional[int] = None,
                  pad_multiple: int = 1) -> Iterator[PolicyBatch]:
    """Chunks of `micro_batch_size` rows, each trimmed to its own used length (padding-aware).

    fixed_length: pipeline parallelism exchanges activations of one fixed shape, so with
    PP > 1 every micro-batch is cut to the same length (the mini-batch's used length).
    pad_multiple: lengths are rounded up to a multiple (sequence parallelism, FP8 kernels; see
    policy/padding.py), with masked columns appended where the batch is narrower.
    """
    for start in range(0, len(batch), micro_batch_size):
        chunk = batch.rows(start, min(start + micro_batch_size, len(batch)))
        length = fixed_length if fixed_length is not None else chunk.used_length()
        length = -(-length // pad_multiple) * pad_multiple
        chunk = chunk.trimmed(length) if length <= chunk.input_ids.shape[1] else pad_columns(chunk, length)
        if fixed_length is not None and len(chunk) < micro_batch_size:
            # Fixed shapes also mean a full last micro-batch: pad with rows that have no valid token.
            chunk = pad_rows(chunk, micro_batch_size)
        yield chunk


def pad_columns(batch: PolicyBatch, length: int) -> PolicyBatch:
    """Append zero columns up to `length` (response_mask 0: masked positions after every row's tokens)."""
    missing = length - batch.input_ids.shape[1]

    def widen(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if x is None or x.dim() == 1:
            return x
        return torch.nn.functional.pad(x, (0, missing))

    return replace(batch, input_ids=widen(batch.input_ids), response_mask=widen(batch.response_mask),
                   advantages=widen(batch.advantages), old_logprobs=widen(batch.old_logprobs),
                   ref_logprobs=widen(batch.ref_logprobs))


def pad_rows(batch: PolicyBatch, rows: int) -> PolicyBatch:
    """Append all-zero rows (response_mask 0: they add nothing to losses or gradients)."""
    missing = rows - len(batch)

    def grow(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if x is None:
            return None
        return torch.cat([x, x.new_zeros((missing, *x.shape[1:]))])

    return PolicyBatch(**{f.name: grow(getattr(batch, f.name)) for f in fields(batch)})


def num_micro_batches(batch_rows: int, micro_batch_size: int) -> int:
    return -(-batch_rows // micro_batch_size)
