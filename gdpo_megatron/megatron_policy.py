"""`MegatronPolicy`: the trained model as the trainer sees it, one instance per rank.

It composes the megatron-core model (gdpo_megatron.policy) with HF weight conversion
(gdpo_megatron.conversion, which itself builds on the policy's model code), so it lives
above both packages.

    state = init_distributed(recipe.policy.parallel)   # gdpo_megatron.distributed.setup
    policy = MegatronPolicy(recipe)
    batch.old_logprobs = policy.compute_logprobs(batch)            # [B, T], token-aligned
    if policy.uses_reference:
        batch.ref_logprobs = policy.compute_reference_logprobs(batch)
    metrics = policy.train(batch, num_mini_batches=2, gpg_alpha=alpha)
    for name, tensor in policy.export_hf_weights(): ...           # refit / HF export
    policy.save_checkpoint(dir); policy.load_checkpoint(dir)

The batch format is `gdpo_megatron.policy.batch.PolicyBatch` (documented there and in
docs/policy-training.md). Every TP/PP rank of one data-parallel replica is called with
the same batch; each DP rank with its own shard, and all DP ranks with the same number
of mini-batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import torch

from gdpo_megatron.config.recipe import RecipeConfig

from gdpo_megatron.conversion import export_hf_weights, load_hf_weights
from gdpo_megatron.policy.batch import PolicyBatch
from gdpo_megatron.policy.checkpoint import (load_model_weights, load_policy_checkpoint, save_model_weights,
                                             save_policy_checkpoint)
from gdpo_megatron.policy.model import build_model, unwrap, vocab_info
from gdpo_megatron.policy.optimizer import build_optimizer, build_scheduler, wrap_ddp
from gdpo_megatron.policy.train_step import StepSettings, compute_logprobs, train_batch
from gdpo_megatron.policy.padding import sequence_multiple


def _total_updates(recipe: RecipeConfig) -> int:
    trainer = recipe.trainer
    return max(1, trainer.max_steps * trainer.mini_batches_per_step * trainer.ppo_epochs)


class MegatronPolicy:
    def __init__(self, recipe: RecipeConfig) -> None:
        self.recipe = recipe
        policy = recipe.policy
        loss = recipe.algorithm.loss
        self.settings = StepSettings(
            loss=loss,
            micro_batch_size=policy.micro_batch_size,
            vocab_size=vocab_info(policy).vocab_size,
            norm_length=float(loss.norm_length or recipe.generation.sampling.max_new_tokens),
            temperature=recipe.generation.sampling.temperature or 1.0,
            sequence_multiple=sequence_multiple(policy),
        )
        self.model = wrap_ddp(build_model(policy), policy.optimizer.distributed)
        if policy.model.hf_path:
            # Before the optimizer: it copies the parameters into its master weights when built.
            self._load_hf(self.model)
        bf16 = policy.precision.dtype == "bf16"
        fp8_recipe = policy.precision.fp8_recipe if policy.precision.fp8_params else None
        self.optimizer = build_optimizer(self.model, policy.optimizer, bf16=bf16, fp8_recipe=fp8_recipe)
        self.scheduler = build_scheduler(self.optimizer, policy.optimizer, _total_updates(recipe))
        self.updates = 0
        self.reference: Optional[list[torch.nn.Module]] = None
        if self.uses_reference:
            self.reference = build_model(policy, for_inference=True)
            if policy.model.hf_path:
                self._load_hf(self.reference)
            else:
                self._copy_weights(self.model, self.reference)

    @property
    def uses_reference(self) -> bool:
        """A frozen reference model exists only when the KL penalty is on."""
        return self.recipe.algorithm.loss.kl_coef > 0

    def _load_hf(self, chunks) -> None:
        load_hf_weights(chunks, self.recipe.policy.model.hf_path, self.recipe.policy)

    @staticmethod
    def _copy_weights(source, target) -> None:
        for src, dst in zip(source, target):
            unwrap(dst).load_state_dict(unwrap(src).state_dict(), strict=False)

    @staticmethod
    def single_update(num_mini_batches: int, epochs: int) -> bool:
        """One optimizer update per batch: the old policy is the current one (strictly on-policy)."""
        return num_mini_batches == 1 and epochs == 1

    def compute_logprobs(self, batch: PolicyBatch) -> torch.Tensor:
        """Token-aligned [B, T] fp32 logprobs of the response tokens under the current weights (0 off the response mask)."""
        return compute_logprobs(self.model, batch, self.settings)

    def compute_reference_logprobs(self, batch: PolicyBatch) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError("no reference model: algorithm.loss.kl_coef is 0")
        return compute_logprobs(self.reference, batch, self.settings)

    def train(self, batch: PolicyBatch, num_mini_batches: int = 1, gpg_alpha: Optional[float] = None,
              epochs: int = 1) -> dict[str, float]:
        """`epochs` passes of `num_mini_batches` optimizer updates; old logprobs are computed if missing.

        Missing old logprobs come from the training forward itself when the batch gets a single
        update (`single_update`): the same loss and gradients as a separate forward pass, one
        forward fewer. Either way `batch.old_logprobs` holds them afterwards.

        Returns metrics averaged over the updates (loss, pg_loss, kl_ref, entropy, approx_kl_old,
        clip_fraction, ratio_mean/min/max, grad_norm, lr) plus `skipped` (updates skipped for
        NaN/inf) and `updates` (applied).
        """
        if batch.old_logprobs is None and not self.single_update(num_mini_batches, epochs):
            batch.old_logprobs = self.compute_logprobs(batch)
        if self.uses_reference and batch.ref_logprobs is None:
            batch.ref_logprobs = self.compute_reference_logprobs(batch)
        summary: dict[str, float] = {}
        for epoch in range(epochs):
            metrics = train_batch(self.model, self.optimizer, self.scheduler, batch, self.settings,
                                  num_mini_batches=num_mini_batches, gpg_alpha=gpg_alpha)
            for name, value in metrics.items():
                if name in ("skipped", "updates"):
                    summary[name] = summary.get(name, 0.0) + value
                else:
                    summary[name] = value if epoch == 0 else summary[name] + (value - summary[name]) / (epoch + 1)
        self.updates += int(summary.get("updates", 0))
        return summary

    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Stream of (HF name, full tensor): TP shards gathered, PP stages included (see conversion)."""
        return export_hf_weights(self.model, self.recipe.policy)

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Collective over all policy ranks; atomic (written to <dir>.partial, then renamed)."""
        return save_policy_checkpoint(directory, self.model, self.optimizer, self.scheduler,
                                      {"updates": self.updates})

    def save_weights(self, directory: str | Path) -> Path:
        """Model weights only (megatron sharded format, loadable into another TP/PP layout)."""
        return save_model_weights(directory, self.model)

    def load_weights(self, directory: str | Path) -> None:
        load_model_weights(directory, self.model)
        if self.reference is not None:
            self._copy_weights(self.model, self.reference)

    def load_checkpoint(self, directory: str | Path) -> None:
        extra = load_policy_checkpoint(directory, self.model, self.optimizer, self.scheduler)
        self.updates = int(extra.get("updates", 0))
