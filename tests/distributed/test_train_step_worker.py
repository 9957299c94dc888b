"""One rank of the train-step equivalence runs (launched by test_train_step.py; no tests here).

Usage: RANK=r WORLD_SIZE=w MASTER_PORT=p python test_train_step_worker.py TP PP MBS OUT_PREFIX INIT_DIR
(INIT_DIR: initial weights; written by the first run if absent)
Writes OUT_PREFIX.rank<r>.pt with, per aggregation mode: metrics of the update and the
logprobs of a fixed probe batch under the updated weights (a layout-independent view of
the new weights).
"""

import os
import sys

ROWS, MINI_BATCHES, SEED = 8, 2, 7
MODES = ("token-mean", "seq-mean-token-mean")


def make_batch():
    import torch

    from gdpo_megatron.policy.batch import build_policy_batch

    g = torch.Generator().manual_seed(SEED)
    prompts, responses = [], []
    for i in range(ROWS):
        p_len, r_len = 2 + (i * 3) % 4, 1 + (i * 5) % 6
        prompts.append(torch.randint(0, 61, (p_len,), generator=g).tolist())
        responses.append(torch.randint(0, 61, (r_len,), generator=g).tolist())
    batch = build_policy_batch(prompts, responses)
    batch.set_advantages(torch.randn(ROWS, generator=g))
    return batch


def recipe(tp, pp, mbs, mode):
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build

    return build(RecipeConfig, {
        "seed": SEED,
        "algorithm": {"loss": {"type": "ppo", "clip_low": 0.2, "clip_high": 0.28, "aggregation": mode,
                               "kl_coef": 0.1, "kl_type": "k3", "entropy_coef": 0.01}},
        "policy": {"model": {"family": "llama", "num_layers": 2, "hidden_size": 32, "ffn_hidden_size": 64,
                             "num_attention_heads": 4, "num_query_groups": 2, "vocab_size": 61,
                             "max_position_embeddings": 64},
                   "parallel": {"tensor": tp, "pipeline": pp}, "micro_batch_size": mbs,
                   "optimizer": {"lr": 1e-2, "clip_grad": 0.5, "weight_decay": 0.0, "distributed": True}},
        "generation": {"sampling": {"max_new_tokens": 8}},
    })


def dp_shard(batch, dp_rank, dp_size):
    """Rows such that this rank's k-th mini-batch is its slice of the single-process k-th mini-batch."""
    import torch

    from gdpo_megatron.policy.batch import PolicyBatch

    per_mini = ROWS // MINI_BATCHES
    per_rank = per_mini // dp_size
    rows = [k * per_mini + dp_rank * per_rank + j for k in range(MINI_BATCHES) for j in range(per_rank)]
    index = torch.tensor(rows)
    return PolicyBatch(**{name: (getattr(batch, name)[index] if getattr(batch, name) is not None else None)
                          for name in batch.__dataclass_fields__})


def main():
    import torch

    tp, pp, mbs, out, init_dir = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    from megatron.core import parallel_state as mpu

    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.megatron_policy import MegatronPolicy

    results = {}
    init_distributed(recipe(tp, pp, mbs, MODES[0]).policy.parallel, seed=SEED)
    for mode in MODES:
        torch.manual_seed(SEED)
        policy = MegatronPolicy(recipe(tp, pp, mbs, mode))
        # Random init differs between layouts; every run starts from the reference's weights,
        # resharded by megatron's dist_checkpointing (which this also tests).
        if not os.path.exists(init_dir):
            policy.save_weights(init_dir)
        policy.load_weights(init_dir)
        full = make_batch()
        probe = full.rows(0, ROWS)
        local = dp_shard(full, mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size())
        local.old_logprobs = policy.compute_logprobs(local)
        # A reference policy that differs from the current one by a per-token amount fixed by the token id.
        local.ref_logprobs = local.old_logprobs - 0.05 * (local.input_ids % 7).float() / 7 * local.response_mask
        before = policy.compute_logprobs(probe)
        metrics = policy.train(local, num_mini_batches=MINI_BATCHES)
        after = policy.compute_logprobs(probe)
        results[mode] = {"metrics": metrics, "before": before, "after": after,
                         "mask": probe.response_mask, "old": local.old_logprobs}
    results["on_policy"] = on_policy_case(tp, pp, mbs, init_dir)
    if tp == 1 and pp == 1 and mpu.get_data_parallel_world_size() == 1:
        results["nan"] = nan_skip_case(tp, pp, mbs, init_dir)
    torch.save(results, f"{out}.rank{os.environ['RANK']}.pt")
    destroy_distributed()


def on_policy_case(tp, pp, mbs, init_dir):
    """One update of the whole local shard, old logprobs from a separate forward vs from the training forward."""
    import torch
    from megatron.core import parallel_state as mpu

    from gdpo_megatron.megatron_policy import MegatronPolicy

    out = {}
    for name in ("two_pass", "fused"):
        torch.manual_seed(SEED)
        policy = MegatronPolicy(recipe(tp, pp, mbs, "token-mean"))
        policy.load_weights(init_dir)
        batch = dp_shard(make_batch(), mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size())
        batch.ref_logprobs = policy.compute_reference_logprobs(batch) - 0.05 * batch.response_mask
        forwards = []  # policy forward calls of this rank's first model chunk
        policy.model[0].register_forward_hook(lambda *_: forwards.append(1))
        if name == "two_pass":
            batch.old_logprobs = policy.compute_logprobs(batch)
        metrics = policy.train(batch, num_mini_batches=1)
        params = [p.detach().clone() for chunk in policy.model for p in chunk.parameters()]
        out[name] = {"metrics": metrics, "old": batch.old_logprobs, "params": params, "forwards": len(forwards)}
    return out


def nan_skip_case(tp, pp, mbs, init_dir):
    """A NaN advantage poisons the loss: the update must be skipped and the weights stay as they were."""
    import math

    import torch

    from gdpo_megatron.megatron_policy import MegatronPolicy

    torch.manual_seed(SEED)
    policy = MegatronPolicy(recipe(tp, pp, mbs, "token-mean"))
    policy.load_weights(init_dir)
    batch = make_batch()
    batch.old_logprobs = policy.compute_logprobs(batch)
    batch.ref_logprobs = batch.old_logprobs.clone()
    batch.advantages = batch.advantages.clone()
    batch.advantages[0] = math.nan
    before = policy.compute_logprobs(batch)
    metrics = policy.train(batch, num_mini_batches=1)
    after = policy.compute_logprobs(batch)
    return {"metrics": metrics, "unchanged": bool(torch.equal(before, after))}


if __name__ == "__main__":
    main()
