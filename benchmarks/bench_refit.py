"""Seconds per weight refit, per transport, vs model size, through the trainer's own refit path.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_refit.py [--quick] [--sizes tiny,small] [--repeats N]
                                                                 [--out results.json] [--smoke]

For each model size: a Ray cluster with one exporting actor (the policy side: `RefitSender`
over a fixed HF state dict, so every transport streams identical tensors and the policy's
own export cost is left out) and one engine actor (`GenerationWorker`, a real vLLM engine).
Each refit is the driver call the trainer makes (`ObjectStoreRefit` / `CollectiveRefit` /
`CudaIpcRefit` from orchestration/refit.py): it returns once the engine has loaded the whole
stream. Best of N refits per transport, with MiB/s.

Every transport the host supports is measured:
  - CPU host (no CUDA): object_store and collective (gloo), both actors on the CPU.
  - GPU host: the exporter holds the weights on its GPU, as a policy rank does.
    * colocated layout: exporter and engine share one GPU (one placement-group bundle of
      1 GPU, 0.5 each): object_store (GPU -> host -> object store -> GPU) and cuda_ipc.
    * separate layout (2+ GPUs): one GPU each: collective over NCCL. NCCL allows one rank
      per GPU, so on a one-GPU host it is reported as left out, with the reason.
`--smoke` also prints one `[gpu-smoke] PASS|SKIP bench_refit_<transport>: ...` line per
transport (scripts/gpu_smoke.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
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
    """The export stream of a fixed checkpoint (what `MegatronPolicy.export_hf_weights` yields).

    On a GPU (the actor was given one) the weights live there, as a policy rank's do.
    """

    def __init__(self, path: str) -> None:
        import torch
        from safetensors.torch import load_file

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.weights = load_file(str(Path(path) / "model.safetensors"), device=device)

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


def recipe_data(bucket_mb: float, colocated: bool = False) -> dict:
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build, to_dict

    return to_dict(build(RecipeConfig, {"generation": {
        "backend": "vllm", "colocated": colocated, "cpu_kv_cache_mb": 32, "max_model_len": 128, "max_num_seqs": 4,
        # GPU engines: a small share of the device and no CUDA graphs (start-up time, not refit, is the cost).
        "gpu_memory_utilization": 0.2, "enforce_eager": True, "refit": {"bucket_mb": bucket_mb}}}))


@dataclass(frozen=True)
class Layout:
    name: str
    gpus_per_actor: float        # 0: CPU actors; 0.5: both actors in one 1-GPU bundle (one shared GPU)
    transports: tuple[str, ...]


def layouts(gpus: int) -> tuple[list[Layout], dict[str, str]]:
    """The layouts this host can run, and the transports left out with the reason."""
    if gpus == 0:
        return [Layout("cpu", 0, ("object_store", "collective"))], {
            "cuda_ipc": "needs CUDA (colocated GPU engines); this host has no GPU"}
    plans = [Layout("colocated", 0.5, ("object_store", "cuda_ipc"))]
    left_out = {}
    if gpus >= 2:
        plans.append(Layout("separate", 1, ("collective",)))
    else:
        left_out["collective"] = (f"NCCL puts one rank per GPU: the exporter and a separate engine need 2 GPUs, "
                                  f"this host has {gpus}")
    return plans, left_out


def actor_options(layout: Layout, group) -> dict:
    if layout.gpus_per_actor == 0:
        return {"num_cpus": 0}
    options = {"num_cpus": 0, "num_gpus": layout.gpus_per_actor}
    if group is not None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
    return options


def measure(size: str, path: Path, repeats: int, bucket_mb: float, layout: Layout) -> list[dict]:
    import ray

    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build
    from gdpo_megatron.orchestration.generation_worker import GenerationWorker
    from gdpo_megatron.orchestration.refit import REFITTERS

    data = recipe_data(bucket_mb, colocated=layout.name == "colocated")
    recipe = build(RecipeConfig, data)
    group = None
    if layout.gpus_per_actor == 0.5:  # one bundle: both actors on the same GPU, whatever the host has
        group = ray.util.placement_group([{"GPU": 1}])
        ray.get(group.ready())
    exporter = ray.remote(exporter_class()).options(**actor_options(layout, group)).remote(str(path))
    engine = ray.remote(GenerationWorker).options(**actor_options(layout, group)).remote(data, str(path))
    nbytes = ray.get(exporter.nbytes.remote())
    ray.get(engine.refit_group_size.remote())  # the engine is up
    rows = []
    for transport in layout.transports:
        refitter_class = REFITTERS[transport]
        refitter = refitter_class(recipe, [exporter], [engine])
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            metrics = refitter.refit()
            seconds.append(time.perf_counter() - start)
        assert metrics["refit/bytes"] == nbytes, (metrics, nbytes)
        best = min(seconds)
        rows.append({"size": size, "layout": layout.name, "transport": refitter_class.name, "MiB": nbytes / 2**20,
                     "buckets": metrics["refit/buckets"], "seconds": best, "MiB_per_s": nbytes / 2**20 / best,
                     "all_seconds": seconds})
        print(f"{size:<7} {layout.name:<10} {refitter_class.name:<13} {nbytes / 2**20:>8.1f} "
              f"{int(metrics['refit/buckets']):>8} {best:>9.3f} {nbytes / 2**20 / best:>9.0f}", flush=True)
    ray.get(engine.close.remote())
    ray.kill(engine)
    ray.kill(exporter)
    if group is not None:
        ray.util.remove_placement_group(group)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny and small models only")
    parser.add_argument("--sizes", default=None, help=f"comma-separated subset of {', '.join(SIZES)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=16.0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    parser.add_argument("--smoke", action="store_true", help="also print one [gpu-smoke] line per transport")
    args = parser.parse_args()

    import ray
    import torch

    from helpers.tiny_models import save_tiny_hf_model

    from gdpo_megatron.orchestration.cluster import short_temp_dir

    sizes = args.sizes.split(",") if args.sizes else (["tiny", "small"] if args.quick else list(SIZES))
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; choose from {list(SIZES)}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    plans, left_out = layouts(gpus)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        temp, _ = short_temp_dir(Path(tmp) / "ray")
        ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False)
        try:
            print(f"bucket bound {args.bucket_mb:g} MiB, best of {args.repeats}; exporter and engine are Ray actors; "
                  f"{gpus} GPU(s)", flush=True)
            print(f"{'model':<7} {'layout':<10} {'transport':<13} {'MiB':>8} {'buckets':>8} {'s/refit':>9} {'MiB/s':>9}")
            for size in sizes:
                hidden, layers, ffn, vocab = SIZES[size]
                path = save_tiny_hf_model(Path(tmp) / size, "llama", hidden_size=hidden, num_layers=layers,
                                          intermediate_size=ffn, vocab_size=vocab, num_heads=hidden // 64,
                                          num_kv_heads=max(1, hidden // 128))
                for layout in plans:
                    rows.extend(measure(size, path, args.repeats, args.bucket_mb, layout))
        finally:
            ray.shutdown()
    for transport, why in left_out.items():
        print(f"{transport}: not measured ({why})")
    if args.smoke:
        for row in rows:
            print(f"[gpu-smoke] PASS bench_refit_{row['transport']}: model={row['size']} layout={row['layout']} "
                  f"MiB={row['MiB']:.1f} buckets={int(row['buckets'])} s/refit={row['seconds']:.3f} "
                  f"MiB/s={row['MiB_per_s']:.0f}")
        for transport, why in left_out.items():
            print(f"[gpu-smoke] SKIP bench_refit_{transport}: {why}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
