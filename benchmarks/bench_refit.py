"""Seconds per weight refit, per transport, vs model size, through the trainer's own refit path.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_refit.py [--quick] [--repeats N] [--out results.json]

For each model size: a Ray cluster with one exporting actor (the policy side: `RefitSender`
over a fixed HF state dict, so every transport streams identical tensors and the policy's
own export cost is left out) and one engine actor (`GenerationWorker`, a real vLLM engine:
the CPU build here). Each refit is the driver call the trainer makes (`ObjectStoreRefit` /
`CollectiveRefit` from orchestration/refit.py): it returns once the engine has loaded the
whole stream. Best of N refits per transport, with MiB/s. `cuda_ipc` needs GPUs and is
absent on CPU hosts; GPU figures come from running this where CUDA is present.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SIZES = {  # name: (hidden, layers, ffn, vocab)
    "tiny": (128, 2, 256, 257),
    "small": (512, 4, 1024, 4096),
    "medium": (1024, 8, 2816, 8192),
}


class StaticPolicy:
    """The export stream of a fixed checkpoint (what `MegatronPolicy.export_hf_weights` yields)."""

    def __init__(self, path: str) -> None:
        from safetensors.torch import load_file

        self.weights = load_file(str(Path(path) / "model.safetensors"))

    def export_hf_weights(self):
        return iter(self.weights.items())


def exporter_class():
    from gdpo_megatron.orchestration.refit import RefitSender

    class Exporter(RefitSender):
        def __init__(self, path: str) -> None:
            import torch

            torch.set_num_threads(1)
            self.policy, self.rank = StaticPolicy(path), 0

        def nbytes(self) -> int:
            return sum(t.numel() * t.element_size() for t in self.policy.weights.values())

    return Exporter


def recipe_data(bucket_mb: float) -> dict:
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build, to_dict

    return to_dict(build(RecipeConfig, {"generation": {
        "backend": "vllm", "colocated": False, "cpu_kv_cache_mb": 32, "max_model_len": 128, "max_num_seqs": 4,
        "refit": {"bucket_mb": bucket_mb}}}))


def measure(size: str, path: Path, repeats: int, bucket_mb: float) -> list[dict]:
    import ray

    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build
    from gdpo_megatron.orchestration.generation_worker import GenerationWorker
    from gdpo_megatron.orchestration.refit import CollectiveRefit, ObjectStoreRefit

    data = recipe_data(bucket_mb)
    recipe = build(RecipeConfig, data)
    exporter = ray.remote(exporter_class()).options(num_cpus=0).remote(str(path))
    engine = ray.remote(GenerationWorker).options(num_cpus=0).remote(data, str(path))
    nbytes = ray.get(exporter.nbytes.remote())
    ray.get(engine.refit_group_size.remote())  # the engine is up
    rows = []
    for refitter_class in (ObjectStoreRefit, CollectiveRefit):
        refitter = refitter_class(recipe, [exporter], [engine])
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            metrics = refitter.refit()
            seconds.append(time.perf_counter() - start)
        assert metrics["refit/bytes"] == nbytes, (metrics, nbytes)
        best = min(seconds)
        rows.append({"size": size, "transport": refitter_class.name, "MiB": nbytes / 2**20,
                     "buckets": metrics["refit/buckets"], "seconds": best, "MiB_per_s": nbytes / 2**20 / best,
                     "all_seconds": seconds})
        print(f"{size:<7} {refitter_class.name:<13} {nbytes / 2**20:>8.1f} {int(metrics['refit/buckets']):>8} "
              f"{best:>9.3f} {nbytes / 2**20 / best:>9.0f}", flush=True)
    ray.get(engine.close.remote())
    ray.kill(engine)
    ray.kill(exporter)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny and small models only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=16.0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args()

    import ray

    from helpers.tiny_models import save_tiny_hf_model

    from gdpo_megatron.orchestration.cluster import short_temp_dir

    sizes = ["tiny", "small"] if args.quick else list(SIZES)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        temp, _ = short_temp_dir(Path(tmp) / "ray")
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False)
        try:
            print(f"bucket bound {args.bucket_mb:g} MiB, best of {args.repeats}; exporter and engine are Ray actors")
            print(f"{'model':<7} {'transport':<13} {'MiB':>8} {'buckets':>8} {'s/refit':>9} {'MiB/s':>9}")
            for size in sizes:
                hidden, layers, ffn, vocab = SIZES[size]
                path = save_tiny_hf_model(Path(tmp) / size, "llama", hidden_size=hidden, num_layers=layers,
                                          intermediate_size=ffn, vocab_size=vocab, num_heads=hidden // 64,
                                          num_kv_heads=max(1, hidden // 128))
                rows.extend(measure(size, path, args.repeats, args.bucket_mb))
        finally:
            ray.shutdown()
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
