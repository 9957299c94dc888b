"""Generation throughput and refit cost on this host.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generation.py [--quick] [--out results.json]

1. tokens/s of greedy decoding for the same tiny Llama (head_dim 64) and prompts:
   vLLM (CPU build, in-process engine), megatron-core's static engine (the `megatron`
   backend) and transformers `generate`; reported with the ratio to transformers,
   measured in the same run.
2. refit seconds per step vs model size: HF-named weights pushed into a running vLLM
   engine with `update_weights` (in-process), each size in its own process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def save_model(out: Path, hidden: int, layers: int, ffn: int) -> Path:
    from helpers.tiny_models import save_tiny_hf_model

    return save_tiny_hf_model(out, "llama", hidden_size=hidden, num_layers=layers, intermediate_size=ffn,
                              num_heads=hidden // 64, num_kv_heads=max(1, hidden // 128))


def prompts(count: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [[1] + torch.randint(4, 200, (8,), generator=gen).tolist() for _ in range(count)]


def recipe_for(backend: str):
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build

    return build(RecipeConfig, {"generation": {"backend": backend, "colocated": False, "cpu_kv_cache_mb": 64,
                                               "max_model_len": 256, "max_num_seqs": 64,
                                               "refit": {"bucket_mb": 64}}})


def time_backend(name: str, path: Path, batch: list[list[int]], new_tokens: int) -> dict:
    from gdpo_megatron.generation import SamplingSettings, create_backend

    backend = create_backend(recipe_for(name), str(path))
    # ignore EOS: every method produces exactly new_tokens per prompt
    settings = SamplingSettings(n=1, temperature=0.0, max_new_tokens=new_tokens, stop_token_ids=())
    backend.generate(batch[:2], settings)  # warm-up
    started = time.perf_counter()
    rollouts = backend.generate(batch, settings)
    seconds = time.perf_counter() - started
    tokens = sum(len(r.token_ids) for r in rollouts)
    backend.close()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def time_transformers(path: Path, batch: list[list[int]], new_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    # equal-length prompts: no padding needed, all rows decode new_tokens
    ids = torch.tensor(batch)
    with torch.no_grad():
        model.generate(ids[:2], max_new_tokens=4, do_sample=False)
        started = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        seconds = time.perf_counter() - started
    tokens = int((out.shape[1] - ids.shape[1]) * ids.shape[0])
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def _throughput_worker(name: str, path: str, batch, new_tokens: int, queue) -> None:
    torch.set_num_threads(1)
    try:
        result = time_transformers(Path(path), batch, new_tokens) if name == "transformers" else \
            time_backend(name, Path(path), batch, new_tokens)
        queue.put(result)
    except Exception as exc:  # report, do not hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _refit_worker(path: str, steps: int, queue) -> None:
    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from gdpo_megatron.generation import create_backend

    backend = create_backend(recipe_for("vllm"), path)
    weights = load_file(str(Path(path) / "model.safetensors"))
    seconds = []
    for step in range(steps):
        shifted = {k: v + 1e-3 * (step + 1) for k, v in weights.items()}  # new values every step
        seconds.append(backend.update_weights(iter(shifted.items())).seconds)
    nbytes = sum(v.numel() * v.element_size() for v in weights.values())
    backend.close()
    queue.put({"bytes": nbytes, "seconds_per_refit": min(seconds), "all_seconds": seconds})


def in_process(target, *args) -> dict:
    """One measurement per fresh process: a vLLM engine owns process-wide state."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get(timeout=900)
    proc.join(timeout=60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller batch and fewer sizes")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--out", type=str, default=None, help="write the results as JSON")
    args, _ = parser.parse_known_args()  # run_all.py passes every benchmark the same flags
    if args.quick:
        args.prompts, args.new_tokens = 8, 32
    sizes = [(128, 2, 256), (512, 4, 1536)] if args.quick else [(128, 2, 256), (512, 4, 1536), (1024, 8, 2816)]

    results: dict = {"host": {"cpus": os.cpu_count(), "torch_threads": 1, "cuda": torch.cuda.is_available()}}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = save_model(Path(tmp) / "tiny", 128, 2, 256)
        batch = prompts(args.prompts)
        throughput = {}
        for name in ("transformers", "vllm", "megatron"):
            throughput[name] = in_process(_throughput_worker, name, str(tiny), batch, args.new_tokens)
            print(f"{name:>12}: {throughput[name]}", flush=True)
        base = throughput["transformers"].get("tokens_per_s")
        for name, row in throughput.items():
            if base and "tokens_per_s" in row:
                row["ratio_vs_transformers"] = row["tokens_per_s"] / base
        results["throughput"] = {"prompts": args.prompts, "new_tokens": args.new_tokens, **throughput}

        refit = []
        for hidden, layers, ffn in sizes:
            path = save_model(Path(tmp) / f"h{hidden}", hidden, layers, ffn)
            row = in_process(_refit_worker, str(path), 3)
            row.update(hidden=hidden, layers=layers, mib=row["bytes"] / 2**20,
                       mib_per_s=row["bytes"] / 2**20 / row["seconds_per_refit"])
            refit.append(row)
            print(f"refit h{hidden} L{layers}: {row['mib']:.1f} MiB in {row['seconds_per_refit']:.3f} s "
                  f"({row['mib_per_s']:.0f} MiB/s)", flush=True)
        results["refit"] = refit

    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
