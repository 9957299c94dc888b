"""How far a micro-batch's sequence length must be padded for the kernels that will see it.

- Sequence parallelism splits the sequence over the tensor-parallel ranks: the length must
  be a multiple of the tensor-parallel size.
- Transformer Engine's FP8 GEMMs assert that the token dimension is a multiple of 16; with
  sequence parallelism each rank holds length / TP tokens per row, so then the length must
  be a multiple of 16 * TP.
Padding appends masked positions (response_mask 0) at the right: attention is causal, so no
valid position attends to them, and the loss, gradients and logprobs are unchanged.
"""

from __future__ import annotations

import math

from gdpo_megatron.config.policy import PolicyConfig

FP8_TOKEN_MULTIPLE = 16


def sequence_multiple(policy: PolicyConfig) -> int:
    """The multiple every micro-batch length is rounded up to (1: no padding needed)."""
    tp = policy.parallel.tensor
    sequence_parallel = policy.parallel.sequence_parallel and tp > 1
    fp8 = policy.precision.fp8 is not None
    required = 1
    if sequence_parallel:
        required = tp
    if fp8:
        required = FP8_TOKEN_MULTIPLE * (tp if sequence_parallel else 1)
    return math.lcm(required, policy.pad_sequence_to)


def padded_length(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple
