"""One rank of the sequence-padding equivalence run (launched by test_sequence_padding.py; no tests here).

Usage: RANK=r WORLD_SIZE=w MASTER_PORT=p python test_sequence_padding_worker.py TP OUT_PREFIX
Trains the same initial weights on the same odd-length batch twice, once with micro-batches
at their own lengths and once padded to a multiple of 8 (policy.pad_sequence_to), and writes
both runs' metrics and the updated logprobs of a probe batch to OUT_PREFIX.rank<r>.pt.
"""

import os
import sys

ROWS, SEED, MULTIPLE = 6, 11, 8


def make_batch():
    import torch

    from gdpo_megatron.policy.batch import build_policy_batch

    g = torch.Generator().manual_seed(SEED)
    prompts = [torch.randint(0, 61, (2 + i % 3,), generator=g).tolist() for i in range(ROWS)]
    responses = [torch.randint(0, 61, (1 + (i * 5) % 6,), generator=g).tolist() for i in range(ROWS)]
    batch = build_policy_batch(prompts, responses)
    batch.set_advantages(torch.randn(ROWS, generator=g))
    return batch


def recipe(tp, pad_to):
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build

    return build(RecipeConfig, {
        "seed": SEED,
        "algorithm": {"loss": {"type": "ppo", "aggregation": "token-mean", "entropy_coef": 0.01}},
        "policy": {"model": {"family": "llama", "num_layers": 2, "hidden_size": 32, "ffn_hidden_size": 64,
                             "num_attention_heads": 4, "num_query_groups": 2, "vocab_size": 61,
                             "max_position_embeddings": 64},
                   "parallel": {"tensor": tp}, "micro_batch_size": 4, "pad_sequence_to": pad_to,
                   "optimizer": {"lr": 1e-2, "clip_grad": 0.0, "weight_decay": 0.0, "distributed": True}},
        "generation": {"sampling": {"max_new_tokens": 8}},
    })


def main():
    import torch

    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.policy.batch import micro_batches
    from gdpo_megatron.megatron_policy import MegatronPolicy

    tp, out = int(sys.argv[1]), sys.argv[2]
    init_distributed(recipe(tp, 1).policy.parallel, seed=SEED)
    results = {}
    for pad_to in (1, MULTIPLE):
        torch.manual_seed(SEED)  # CPU initialization: the same master weights in both runs
        policy = MegatronPolicy(recipe(tp, pad_to))
        batch = make_batch()
        widths = [mb.input_ids.shape[1] for mb in micro_batches(batch, 4, pad_multiple=policy.settings.sequence_multiple)]
        before = policy.compute_logprobs(batch)
        metrics = policy.train(batch)
        after = policy.compute_logprobs(make_batch())
        results[pad_to] = {"widths": widths, "batch_width": batch.input_ids.shape[1], "metrics": metrics,
                           "before": before, "after": after, "mask": batch.response_mask}
    torch.save(results, f"{out}.rank{os.environ['RANK']}.pt")
    destroy_distributed()


if __name__ == "__main__":
    main()
