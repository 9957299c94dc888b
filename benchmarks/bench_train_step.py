"""Train-step throughput of `MegatronPolicy.train` against plain PyTorch/transformers, same run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_step.py [--quick] [--repeats N]

Part 1 (always; on the CPU here, on the GPU where CUDA is present): a tiny Llama-shaped
model (the shape of recipes/tiny/base.yaml's policy.model), one process, fp32.
  - megatron: `MegatronPolicy.train(batch)` on a fixed synthetic PolicyBatch: one
    optimizer update (PPO clipped surrogate, token-mean, vocab-parallel logprobs and
    entropy, megatron DDP + distributed Adam, global grad-norm clip, NaN guard).
  - baseline: transformers' LlamaForCausalLM of the same shape, same tokens, same
    micro-batches, forward + backward of the same token-mean clipped PG loss, grad clip,
    torch.optim.AdamW. It does not compute the entropy, metrics or the NaN guard, so
    the ratio is the overhead of the whole Megatron step, not only of the model.
  Tokens/s counts every input token (prompt + response) of the batch per update.

Part 2 (only when torch.cuda.is_available(); NOT RUN on the development machine, which
has no GPU: written from the code paths, expect to fix details on first use): NCCL,
bf16 (Float16Module + fp32 master weights in the distributed optimizer), a ~1B
Llama-shaped model (16 layers, hidden 2048, 16 heads, 8 KV heads, ffn 8192, vocab
32000), sequence length 2048. Reports tokens/s and model FLOPs utilization:
    model FLOPs per token = 6 * N + 12 * layers * hidden * seq
N = parameters that take part in matmuls (all but the input embedding table, whose
lookup costs no FLOPs); the second term is attention (QK^T and AV, forward + backward,
PaLM's convention, causal masking not discounted). MFU = FLOPs/token * tokens/s / peak,
peak = dense bf16 TFLOP/s of the GPU (989 for H100/H200 SXM; --peak-tflops overrides).
Launch on one GPU as is, or with torchrun for data parallelism (tokens/s is then the
whole world's).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

SEED = 1234

TINY = dict(num_layers=2, hidden_size=128, ffn_hidden_size=256, num_attention_heads=2, num_query_groups=2,
            vocab_size=512, max_position_embeddings=256)
ONE_B = dict(num_layers=16, hidden_size=2048, ffn_hidden_size=8192, num_attention_heads=16, num_query_groups=8,
             vocab_size=32000, max_position_embeddings=4096)

# Dense bf16 tensor-core peaks (TFLOP/s), matched against torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0))


def recipe(model: dict, *, micro_batch_size: int, bf16: bool, response_tokens: int):
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build

    return build(RecipeConfig, {
        "seed": SEED,
        "algorithm": {"loss": {"type": "ppo", "clip_low": 0.2, "clip_high": 0.28, "aggregation": "token-mean"}},
        "policy": {"model": {"family": "llama", "rope_theta": 10000.0, "norm_epsilon": 1e-5,
                             "tie_embeddings": False, **model},
                   "parallel": {"tensor": 1, "pipeline": 1},
                   "precision": {"dtype": "bf16" if bf16 else "fp32"},
                   "micro_batch_size": micro_batch_size,
                   # A small lr keeps the ratios near 1 over the repeats (no clipping regime change).
                   "optimizer": {"lr": 1e-5, "weight_decay": 0.0, "clip_grad": 1.0, "distributed": True}},
        "generation": {"sampling": {"max_new_tokens": response_tokens}},
    })


def synthetic_batch(rows: int, prompt: int, response: int, vocab: int):
    """Fixed prompts + responses filling the whole length (every micro-batch has the same shape)."""
    from gdpo_megatron.policy.batch import build_policy_batch

    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab, (rows, prompt + response), generator=g)
    batch = build_policy_batch([r[:prompt].tolist() for r in ids], [r[prompt:].tolist() for r in ids])
    batch.set_advantages(torch.randn(rows, generator=g))
    return batch


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, warmup: int, repeats: int) -> float:
    """Median seconds of fn() after warmup calls (the first calls pay for allocations and lazy init)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def megatron_step_time(cfg, batch, warmup: int, repeats: int) -> tuple[float, object]:
    from gdpo_megatron.megatron_policy import MegatronPolicy

    torch.manual_seed(SEED)
    policy = MegatronPolicy(cfg)
    batch.old_logprobs = policy.compute_logprobs(batch)  # fixed old policy: every repeat does the same work

    def step():
        metrics = policy.train(batch, num_mini_batches=1)
        if metrics["skipped"]:
            raise RuntimeError(f"benchmark update was skipped (non-finite loss/grad): {metrics}")

    return timed(step, warmup, repeats), policy


def hf_baseline_time(model: dict, batch, micro_batch_size: int, warmup: int, repeats: int) -> float:
    """Plain PyTorch: transformers LlamaForCausalLM + AdamW, the same token-mean clipped PG loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    config = LlamaConfig(vocab_size=model["vocab_size"], hidden_size=model["hidden_size"],
                         intermediate_size=model["ffn_hidden_size"], num_hidden_layers=model["num_layers"],
                         num_attention_heads=model["num_attention_heads"],
                         num_key_value_heads=model["num_query_groups"],
                         max_position_embeddings=model["max_position_embeddings"], rope_theta=10000.0,
                         rms_norm_eps=1e-5, tie_word_embeddings=False)
    torch.manual_seed(SEED)
    net = LlamaForCausalLM(config).to(device).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-5, weight_decay=0.0)
    ids = batch.input_ids.to(device)
    mask = batch.response_mask[:, 1:].to(device)
    adv = batch.advantages.to(device).unsqueeze(-1)
    num_tokens = mask.sum()

    def token_logprobs(chunk_ids):
        logits = net(input_ids=chunk_ids).logits.float()[:, :-1]
        return torch.log_softmax(logits, -1).gather(-1, chunk_ids[:, 1:].unsqueeze(-1)).squeeze(-1)

    with torch.no_grad():
        old = torch.cat([token_logprobs(ids[i:i + micro_batch_size]) for i in range(0, len(ids), micro_batch_size)])

    def step():
        optimizer.zero_grad(set_to_none=True)
        for i in range(0, len(ids), micro_batch_size):
            sl = slice(i, i + micro_batch_size)
            ratio = torch.exp(token_logprobs(ids[sl]) - old[sl])
            pg = torch.maximum(-adv[sl] * ratio, -adv[sl] * ratio.clamp(1 - 0.2, 1 + 0.28))
            ((pg * mask[sl]).sum() / num_tokens).backward()  # global token mean, summed over micro-batches
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()

    seconds = timed(step, warmup, repeats)
    del net, optimizer
    return seconds


def matmul_params(policy) -> int:
    from gdpo_megatron.policy.model import unwrap

    total = 0
    for chunk in policy.model:
        for name, p in unwrap(chunk).named_parameters():
            if "embedding.word_embeddings" not in name:  # a lookup, not a matmul
                total += p.numel()
    return total


def peak_tflops(override: float | None) -> tuple[float, str]:
    name = torch.cuda.get_device_name()
    if override:
        return override, name
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, name
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (dense bf16 peak)")


def part_tiny(args) -> None:
    rows, prompt, response, mbs = (16, 16, 48, 8) if args.quick else (32, 16, 112, 8)
    batch = synthetic_batch(rows, prompt, response, TINY["vocab_size"])
    tokens = batch.input_ids.numel()
    warmup, repeats = (1, args.repeats or 3) if args.quick else (2, args.repeats or 10)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"Part 1: tiny Llama ({TINY['num_layers']} layers, hidden {TINY['hidden_size']}, ffn "
          f"{TINY['ffn_hidden_size']}, vocab {TINY['vocab_size']}), fp32, 1 process, {device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"batch: {rows} rows x {prompt + response} tokens ({response} response), micro-batch {mbs}, "
          f"1 update per step; median of {repeats} after {warmup} warmup", flush=True)
    cfg = recipe(TINY, micro_batch_size=mbs, bf16=False, response_tokens=response)
    meg_s, policy = megatron_step_time(cfg, batch, warmup, repeats)
    params = sum(p.numel() for chunk in policy.model for p in chunk.parameters())
    del policy
    gc.collect()
    base_s = hf_baseline_time(TINY, batch, mbs, warmup, repeats)
    print(f"parameters: {params:,}")
    print(f"{'implementation':<34} {'s/step':>8} {'tokens/s':>10}")
    print(f"{'MegatronPolicy.train (megatron)':<34} {meg_s:>8.4f} {tokens / meg_s:>10.0f}")
    print(f"{'HF LlamaForCausalLM + AdamW':<34} {base_s:>8.4f} {tokens / base_s:>10.0f}")
    print(f"ratio megatron / baseline tokens/s: {base_s / meg_s:.2f}", flush=True)


def part_gpu(args) -> None:
    """~1B model in bf16 on CUDA (not run on the CPU-only development machine)."""
    seq = args.seq_length
    rows, mbs, prompt = args.gpu_rows, args.gpu_micro_batch, 256
    batch = synthetic_batch(rows, prompt, seq - prompt, ONE_B["vocab_size"])
    tokens = batch.input_ids.numel()
    cfg = recipe(ONE_B, micro_batch_size=mbs, bf16=True, response_tokens=seq - prompt)
    peak, gpu = peak_tflops(args.peak_tflops)
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    print(f"\nPart 2: ~1B Llama (16 layers, hidden 2048, 16/8 heads, ffn 8192, vocab 32000), bf16, "
          f"{gpu}, world {world}")
    print(f"batch per rank: {rows} rows x {seq} tokens, micro-batch {mbs}", flush=True)
    seconds, policy = megatron_step_time(cfg, batch, warmup=2, repeats=args.repeats or 5)
    n = matmul_params(policy)
    model = cfg.policy.model
    flops_per_token = 6 * n + 12 * model.num_layers * model.hidden_size * seq
    tokens_per_s = tokens * world / seconds
    mfu = flops_per_token * tokens_per_s / (peak * 1e12 * world)
    print(f"matmul parameters: {n / 1e9:.3f} B; model FLOPs/token: {flops_per_token / 1e9:.2f} GFLOP")
    print(f"{'s/step':>8} {'tokens/s':>10} {'TFLOP/s/GPU':>12} {'MFU':>6}")
    print(f"{seconds:>8.3f} {tokens_per_s:>10.0f} {flops_per_token * tokens_per_s / world / 1e12:>12.1f} "
          f"{100 * mfu:>5.1f}%")
    print(f"peak assumed: {peak:g} TFLOP/s dense bf16; max memory allocated "
          f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller batch and fewer repeats (CPU: well under 2 min)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (median reported)")
    parser.add_argument("--seq-length", type=int, default=2048, help="GPU part: tokens per row")
    parser.add_argument("--gpu-rows", type=int, default=8, help="GPU part: rows per rank per update")
    parser.add_argument("--gpu-micro-batch", type=int, default=1, help="GPU part: micro-batch size")
    parser.add_argument("--peak-tflops", type=float, default=None, help="GPU part: dense bf16 peak of the GPU")
    parser.add_argument("--skip-gpu", action="store_true", help="only part 1 even where CUDA is present")
    args = parser.parse_args()

    from gdpo_megatron.config.policy import ParallelConfig
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    # World size and ranks come from the environment (torchrun) or default to 1 process.
    # The GPU part with torchrun uses DP = world size; part 1 is meant for one process.
    init_distributed(ParallelConfig(tensor=1, pipeline=1), seed=SEED)
    try:
        part_tiny(args)
        if torch.cuda.is_available() and not args.skip_gpu:
            gc.collect()
            torch.cuda.empty_cache()
            part_gpu(args)
    finally:
        destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
