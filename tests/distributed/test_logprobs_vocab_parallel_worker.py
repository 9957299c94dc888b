"""One TP rank of the vocab-parallel logprobs check (launched by test_logprobs_vocab_parallel.py; no tests here).

Usage: RANK=r WORLD_SIZE=2 MASTER_PORT=p python test_logprobs_vocab_parallel_worker.py OUT_PREFIX
Every rank builds the same full-vocabulary logits from a fixed seed, keeps its own
contiguous vocab slice (as the output layer of a TP=2 model would hold it), and writes
OUT_PREFIX.rank<r>.pt with, per case: the logprobs and entropy of
`vocab_parallel_logprobs` and the gradient that reached its slice. The full-softmax
reference is computed by the test, in its own process, from `case_logits`.
"""

import os
import sys

B, T, SEED = 3, 5, 11
# (name, padded vocab held by the output layer, real vocab or None, temperature)
CASES = (
    ("even-vocab", 64, None, 1.0),
    ("padded-vocab", 62, 61, 1.0),       # 61 real rows, one padding row on rank 1
    ("padded-vocab-temp", 62, 61, 0.7),
    ("padded-vocab-hot", 62, 59, 1.3),   # three padding rows, temperature > 1
)


def case_logits(padded_vocab, real_vocab, seed):
    """Full logits, targets and the loss weights used for the gradient check; identical on every rank."""
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(B, T, padded_vocab, generator=g)
    if real_vocab is not None:
        # Large values in the padding rows: if they leaked into the softmax, results would be far off.
        logits[..., real_vocab:] = 50.0
    high = real_vocab if real_vocab is not None else padded_vocab
    targets = torch.randint(0, high, (B, T), generator=g)
    # Pin targets in both halves of the vocabulary so both ranks own some of them.
    targets[0, 0], targets[0, 1] = 0, high - 1
    w_logprob = torch.randn(B, T, generator=g)
    w_entropy = torch.randn(B, T, generator=g)
    return logits, targets, w_logprob, w_entropy


def main():
    import torch
    from megatron.core import parallel_state as mpu

    from gdpo_megatron.config.policy import ParallelConfig
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.policy.logprobs import vocab_parallel_logprobs

    init_distributed(ParallelConfig(tensor=2, pipeline=1), seed=SEED)
    tp_rank, tp_size = mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size()
    results = {}
    for i, (name, padded, real, temperature) in enumerate(CASES):
        logits, targets, w_logprob, w_entropy = case_logits(padded, real, SEED + i)
        width = padded // tp_size
        local = logits[..., tp_rank * width:(tp_rank + 1) * width].clone().requires_grad_(True)
        out = vocab_parallel_logprobs(local, targets, vocab_size=real, temperature=temperature, with_entropy=True)
        ((out.logprobs * w_logprob).sum() + (out.entropy * w_entropy).sum()).backward()
        results[name] = {"logprobs": out.logprobs.detach(), "entropy": out.entropy.detach(),
                         "grad": local.grad.detach(), "tp_rank": tp_rank, "width": width}
    torch.save(results, f"{sys.argv[1]}.rank{os.environ['RANK']}.pt")
    destroy_distributed()


if __name__ == "__main__":
    main()
