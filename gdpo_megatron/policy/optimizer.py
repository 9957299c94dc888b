"""Megatron DDP wrapping, the (distributed) Adam optimizer, the LR schedule, and a guarded step.

The step is megatron's own sequence (prepare grads -> global grad norm -> clip -> Adam)
with one addition: when the loss or the grad norm is not finite, no parameter or
optimizer state is touched and the caller is told so (the trainer counts consecutive
skips). Megatron's fp32/bf16 optimizers have no such check of their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from gdpo_megatron.config.optimizer import OptimizerConfig


def wrap_ddp(model_chunks: list[torch.nn.Module], distributed_optimizer: bool) -> list[torch.nn.Module]:
    """Wrap bare model chunks in megatron's DDP (contiguous fp32 grad buffers); wrapped ones pass through."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=distributed_optimizer,
        # Our loss is already divided by global counts: gradients must be SUMMED over DP
        # (calculate_per_token_loss, set in the train step), never averaged again.
        average_in_collective=False,
    )
    wrapped = []
    for chunk in model_chunks:
        if isinstance(chunk, DistributedDataParallel):
            wrapped.append(chunk)
            continue
        config = chunk.config
        # Read by DDP's constructor to choose SUM over DP; must be set before wrapping.
        config.calculate_per_token_loss = True
        wrapped.append(DistributedDataParallel(config=config, ddp_config=ddp_config, module=chunk,
                                               disable_bucketing=len(wrapped) > 0))
    return wrapped


def build_optimizer(model_chunks: list[torch.nn.Module], config: OptimizerConfig, *, bf16: bool,
                    fp8_recipe: str | None = None):
    """megatron's (distributed) Adam; build it after the weights are loaded (policy/master_weights.py).

    fp8_recipe: the FP8 scaling recipe when parameters are FP8 (the distributed optimizer shards
    and gathers Float8 parameters differently per recipe).
    """
    from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
    from megatron.core.optimizer import get_megatron_optimizer

    mcore_config = McoreOptimizerConfig(
        optimizer="adam",
        lr=config.lr,
        min_lr=config.min_lr,
        weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1,
        adam_beta2=config.adam_beta2,
        adam_eps=config.adam_eps,
        clip_grad=config.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=config.distributed,
        fp8_recipe=fp8_recipe,
    )
    return get_megatron_optimizer(mcore_config, model_chunks)


def build_scheduler(optimizer, config: OptimizerConfig, total_updates: int):
    """Linear warmup from lr/warmup to lr over `warmup_steps` updates, then constant/cosine/linear to min_lr.

    The scheduler is advanced once before the first update so that update k (0-based)
    uses the lr of step k+1: the first warmup update is lr/warmup, not 0.
    """
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    decay_steps = max(config.decay_steps or total_updates, config.warmup_steps + 1)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if config.warmup_steps > 0 else config.lr,
        max_lr=config.lr,
        min_lr=config.min_lr,
        lr_warmup_steps=config.warmup_steps,
        lr_decay_steps=decay_steps,
        lr_decay_style=config.schedule,
        start_wd=config.weight_decay,
        end_wd=config.weight_decay,
        wd_incr_steps=decay_steps,
        wd_incr_style="constant",
    )
    scheduler.step(1)
    return scheduler


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


@dataclass
class StepOutcome:
    applied: bool
    grad_norm: float


def _sub_optimizers(optimizer) -> list[Any]:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


@torch.no_grad()
def guarded_step(optimizer, loss_is_finite: bool) -> StepOutcome:
    """Clip and apply the accumulated gradients unless the loss or the grad norm is NaN/inf.

    `loss_is_finite` must already agree on every rank (see train_step); the grad norm is
    global (megatron reduces it over model- and data-parallel groups), so all ranks take
    the same branch and no collective is left unmatched.
    """
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    found_inf = optimizer.prepare_grads()
    grad_norm = float(optimizer.get_grad_norm())
    if found_inf or not loss_is_finite or not math.isfinite(grad_norm):
        return StepOutcome(applied=False, grad_norm=grad_norm)
    for sub in _sub_optimizers(optimizer):
        params = sub.get_parameters()
        if params and sub.config.clip_grad > 0.0:
            clip_grad_by_total_norm_fp32(params, max_norm=sub.config.clip_grad, total_norm=grad_norm,
                                         use_decoupled_grad=sub.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    applied = bool(optimizer.step_with_ready_grads())
    return StepOutcome(applied=applied, grad_norm=grad_norm)
