"""Forward-only logprobs and the RL train step through megatron-core's pipeline schedules.

Normalization contract (docs/losses.md): for each mini-batch the valid-token and
sequence counts are all-reduced over the data-parallel group first; every micro-batch
loss is divided by those global counts; megatron is told not to rescale anything
(`calculate_per_token_loss=True` and a finalize function that drops its token count),
so gradients are plain sums over micro-batches and over DP ranks = the full-batch gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Iterable, Optional

import torch
import torch.distributed as dist

from gdpo_megatron.algorithms.aggregation import GlobalCounts, count_valid
from gdpo_megatron.algorithms.losses import LossInputs, metric_reduction, policy_loss
from gdpo_megatron.config.loss import LossConfig

from .batch import PolicyBatch, micro_batches, mini_batches, num_micro_batches
from .logprobs import vocab_parallel_logprobs
from .optimizer import current_lr, guarded_step


@dataclass(frozen=True)
class StepSettings:
    """What the train step needs besides the model and optimizer."""

    loss: LossConfig
    micro_batch_size: int
    vocab_size: int  # real vocabulary (padded TP rows are masked out)
    norm_length: float  # seq-mean-token-sum-norm constant
    temperature: float = 1.0
    sequence_multiple: int = 1  # micro-batch lengths are padded to a multiple of this (policy/padding.py)


def _mpu():
    from megatron.core import parallel_state

    return parallel_state


def finalize_grads_sum(model_chunks, num_tokens=None, **kwargs) -> None:
    """megatron's finalize_model_grads (DP all-reduce, PP embedding sync, ...) without its 1/num_tokens rescale.

    Our losses are already divided by global counts; megatron would divide a second time.
    """
    from megatron.core.distributed import finalize_model_grads

    finalize_model_grads(model_chunks, num_tokens=None, **kwargs)


def _configure(model_chunks) -> None:
    from megatron.core.utils import get_model_config

    config = get_model_config(model_chunks[0])
    config.finalize_model_grads_func = finalize_grads_sum
    config.calculate_per_token_loss = True


def _positions(input_ids: torch.Tensor) -> torch.Tensor:
    return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _token_aligned(per_next_token: torch.Tensor) -> torch.Tensor:
    """Shift [B, T-1] values about token t+1 into token-aligned [B, T] (column 0 is 0)."""
    return torch.nn.functional.pad(per_next_token, (1, 0))


def _shifted_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, settings: StepSettings, with_entropy: bool):
    """Token-aligned logprobs/entropy from last-stage vocab-parallel logits [B, T, V/TP]."""
    out = vocab_parallel_logprobs(logits[:, :-1], input_ids[:, 1:], vocab_size=settings.vocab_size,
                                  temperature=settings.temperature, with_entropy=with_entropy)
    entropy = _token_aligned(out.entropy) if out.entropy is not None else None
    return _token_aligned(out.logprobs), entropy


def _run_schedule(model_chunks, micro: list[PolicyBatch], forward_step, forward_only: bool):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    data = [iter(micro) for _ in model_chunks] if len(model_chunks) > 1 else iter(micro)
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data,
        model=model_chunks,
        num_microbatches=len(micro),
        seq_length=int(micro[0].input_ids.shape[1]),
        micro_batch_size=int(micro[0].input_ids.shape[0]),
        forward_only=forward_only,
    )


def _split(batch: PolicyBatch, settings: StepSettings) -> list[PolicyBatch]:
    # Pipeline stages exchange fixed-shape activations: one length, full micro-batches.
    fixed = batch.used_length() if _mpu().get_pipeline_model_parallel_world_size() > 1 else None
    return list(micro_batches(batch, settings.micro_batch_size, fixed_length=fixed,
                              pad_multiple=settings.sequence_multiple))


def _broadcast_from_last_stage(tensor: Optional[torch.Tensor], shape, dtype) -> torch.Tensor:
    mpu = _mpu()
    if mpu.get_pipeline_model_parallel_world_size() == 1:
        return tensor
    if tensor is None:
        tensor = torch.empty(shape, dtype=dtype, device=_device())
    tensor = tensor.to(_device()).contiguous()
    dist.broadcast(tensor, src=mpu.get_pipeline_model_parallel_last_rank(), group=mpu.get_pipeline_model_parallel_group())
    return tensor


@torch.no_grad()
def compute_logprobs(model_chunks, batch: PolicyBatch, settings: StepSettings) -> torch.Tensor:
    """Token-aligned [B, T] fp32 logprobs of the response tokens (0 off the response mask); the same on every rank."""
    micro = _split(batch, settings)
    device = _device()

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        ids = mb.input_ids.to(device)
        output = model(ids, _positions(ids), attention_mask=None)

        def collect(logits):
            logprobs, _ = _shifted_logprobs(logits, ids, settings, with_entropy=False)
            return torch.zeros((), device=device), {"logprobs": logprobs}

        return output, collect

    for chunk in model_chunks:
        chunk.eval()
    try:
        outputs = _run_schedule(model_chunks, micro, forward_step, forward_only=True)
    finally:
        for chunk in model_chunks:
            chunk.train()
    return _assemble_logprobs([o["logprobs"] for o in outputs] if outputs else [], batch)


def _assemble_logprobs(pieces: list[torch.Tensor], batch: PolicyBatch) -> torch.Tensor:
    """Micro-batch logprobs (last pipeline stage) -> token-aligned [B, T] on every rank, 0 off the response mask."""
    result = None
    if _mpu().is_pipeline_last_stage(ignore_virtual=True):
        width = batch.input_ids.shape[1]
        # Micro-batches are trimmed to their used length or padded past the batch width; restore it.
        rows = [torch.nn.functional.pad(p.float()[:, :width], (0, max(0, width - p.shape[1]))) for p in pieces]
        result = torch.cat(rows)[: len(batch)]
    result = _broadcast_from_last_stage(result, tuple(batch.input_ids.shape), torch.float32).cpu()
    # Outside the response the values depend on how rows were grouped into micro-batches; zero them.
    return result * (batch.response_mask != 0)


def global_counts(batch: PolicyBatch, norm_length: float) -> GlobalCounts:
    """Valid tokens and sequences of this mini-batch summed over the data-parallel group."""
    tokens, sequences = count_valid(batch.response_mask)
    counts = torch.tensor([tokens, sequences], dtype=torch.float64, device=_device())
    if dist.is_initialized():
        dist.all_reduce(counts, group=_mpu().get_data_parallel_group())
    return GlobalCounts(num_tokens=float(counts[0]), num_sequences=float(counts[1]), norm_length=norm_length)


def _reduce_metrics(pieces: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Combine micro-batch metric shares, then over DP ranks (sum, min or max per metric)."""
    combined: dict[str, torch.Tensor] = {}
    for piece in pieces:
        for name, value in piece.items():
            value = value.detach().double().reshape(())
            op = metric_reduction(name)
            if name not in combined:
                combined[name] = value
            elif op == "min":
                combined[name] = torch.minimum(combined[name], value)
            elif op == "max":
                combined[name] = torch.maximum(combined[name], value)
            else:
                combined[name] = combined[name] + value
    if dist.is_initialized() and _mpu().get_data_parallel_world_size() > 1:
        group = _mpu().get_data_parallel_group()
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        for name in sorted(combined):  # same order on every rank
            tensor = combined[name].to(_device()).clone()
            dist.all_reduce(tensor, op=ops[metric_reduction(name)], group=group)
            combined[name] = tensor
    return {name: float(value) for name, value in combined.items()}


_METRIC_NAMES = ("loss", "pg_loss", "kl_ref", "entropy", "approx_kl_old", "ratio_mean", "ratio_min", "ratio_max",
                 "clip_fraction", "dual_clip_fraction")


def _broadcast_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Loss metrics exist on the last pipeline stage only; give every rank the same numbers."""
    mpu = _mpu()
    if mpu.get_pipeline_model_parallel_world_size() == 1:
        return metrics
    values = torch.tensor([metrics.get(n, math.nan) for n in _METRIC_NAMES], dtype=torch.float64, device=_device())
    dist.broadcast(values, src=mpu.get_pipeline_model_parallel_last_rank(), group=mpu.get_pipeline_model_parallel_group())
    return {n: float(v) for n, v in zip(_METRIC_NAMES, values.tolist()) if not math.isnan(v)}


def _any_rank_true(flag: bool) -> bool:
    value = torch.tensor([1.0 if flag else 0.0], device=_device())
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def train_mini_batch(model_chunks, optimizer, scheduler, batch: PolicyBatch, settings: StepSettings,
                     gpg_alpha: Optional[float] = None) -> dict[str, float]:
    """One optimizer update on this rank's share of one mini-batch.

    `batch.old_logprobs` None means the update is on-policy: the batch gets exactly this
    one update, so the old policy is the current one and its logprobs are the training
    forward's own, detached (the ratio is exp(0) = 1 with a live gradient). They are then
    written to `batch.old_logprobs` (token-aligned, 0 off the response mask, on every rank),
    as a separate `compute_logprobs` pass would have produced them.
    """
    if batch.advantages is None:
        raise ValueError("train needs batch.advantages (see gdpo_megatron/policy/batch.py)")
    _configure(model_chunks)
    counts = global_counts(batch, settings.norm_length)
    micro = _split(batch, settings)
    device = _device()
    want_entropy = True
    on_policy = batch.old_logprobs is None
    policy_logprobs: list[torch.Tensor] = []  # the training forward's, per micro-batch (on-policy only)

    def loss_func(mb: PolicyBatch, ids: torch.Tensor, logits: torch.Tensor):
        logprobs, entropy = _shifted_logprobs(logits, ids, settings, with_entropy=want_entropy)
        if on_policy:
            policy_logprobs.append(logprobs.detach())
        inputs = LossInputs(
            logprobs=logprobs,
            old_logprobs=logprobs.detach() if on_policy else mb.old_logprobs.to(device),
            advantages=mb.advantages.to(device),
            mask=mb.response_mask.to(device),
            ref_logprobs=mb.ref_logprobs.to(device) if mb.ref_logprobs is not None else None,
            entropy=entropy,
        )
        loss, metrics = policy_loss(inputs, settings.loss, counts, gpg_alpha=gpg_alpha)
        local_tokens = mb.response_mask.sum().to(device=device, dtype=torch.int)
        return loss, local_tokens, metrics

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        ids = mb.input_ids.to(device)
        output = model(ids, _positions(ids), attention_mask=None)
        return output, partial(loss_func, mb, ids)

    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    pieces = _run_schedule(model_chunks, micro, forward_step, forward_only=False)
    metrics = _reduce_metrics(pieces) if _mpu().is_pipeline_last_stage(ignore_virtual=True) else {}
    metrics = _broadcast_metrics(metrics)
    if on_policy:
        batch.old_logprobs = _assemble_logprobs(policy_logprobs, batch)
    loss_finite = not _any_rank_true(not math.isfinite(metrics.get("loss", 0.0)))
    outcome = guarded_step(optimizer, loss_finite)
    metrics["lr"] = current_lr(optimizer)
    if outcome.applied:
        scheduler.step(1)
    metrics["grad_norm"] = outcome.grad_norm
    metrics["skipped"] = 0.0 if outcome.applied else 1.0
    metrics["num_micro_batches"] = float(len(micro))
    metrics["global_tokens"] = counts.num_tokens
    metrics["global_sequences"] = counts.num_sequences
    return metrics


def train_batch(model_chunks, optimizer, scheduler, batch: PolicyBatch, settings: StepSettings,
                num_mini_batches: int = 1, gpg_alpha: Optional[float] = None) -> dict[str, float]:
    """Several optimizer updates, one per contiguous mini-batch; metrics averaged over them.

    `skipped` counts the updates skipped for NaN/inf loss or grad norm; `updates` those applied.
    Without `batch.old_logprobs` the batch must be one mini-batch (an on-policy update, see
    `train_mini_batch`); `batch.old_logprobs` is then set from the training forward.
    """
    if batch.old_logprobs is None:
        if num_mini_batches != 1:
            raise ValueError(f"train without batch.old_logprobs is one on-policy update; got "
                             f"num_mini_batches={num_mini_batches} (compute the old logprobs first)")
        per_update = [train_mini_batch(model_chunks, optimizer, scheduler, batch, settings, gpg_alpha)]
    else:
        per_update = [train_mini_batch(model_chunks, optimizer, scheduler, mb, settings, gpg_alpha)
                      for mb in mini_batches(batch, num_mini_batches)]
    summary: dict[str, float] = {}
    for name in per_update[0]:
        values = [m[name] for m in per_update if name in m]
        if name == "skipped":
            summary[name] = sum(values)
        elif name == "ratio_min":
            summary[name] = min(values)
        elif name == "ratio_max":
            summary[name] = max(values)
        elif name == "lr":
            summary[name] = values[-1]
        else:
            summary[name] = sum(values) / len(values)
    summary["updates"] = float(len(per_update)) - summary["skipped"]
    return summary


__all__ = ["StepSettings", "compute_logprobs", "train_batch", "train_mini_batch", "global_counts",
           "finalize_grads_sum", "num_micro_batches"]
