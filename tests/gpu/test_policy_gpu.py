"""GPU smoke: the policy's NCCL/bf16/FP8 paths, sequence-parallel padding, the advantage all-gather on NCCL,
HF export from the GPU."""

from __future__ import annotations

import pytest
import torch

from gpu_helpers import FP8, gpu_recipe, hf_logprobs, need_te, odd_length_batch


def test_nccl_bf16_train_step_odd_lengths(gpu_world, tiny_hf, record_property):
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.transformer.module import Float16Module

    from gdpo_megatron.megatron_policy import MegatronPolicy

    policy = MegatronPolicy(gpu_recipe(tiny_hf, precision={"dtype": "bf16"}))
    assert isinstance(policy.model[0], DistributedDataParallel) and isinstance(policy.model[0].module, Float16Module)
    assert type(policy.optimizer).__name__ in ("DistributedOptimizer", "ChainedOptimizer")
    batch = odd_length_batch()
    mask = batch.response_mask != 0
    before = policy.compute_logprobs(batch)
    reference = hf_logprobs(tiny_hf, batch)
    bf16_error = (before - reference).abs()[mask].mean().item()
    assert bf16_error < 5e-2, bf16_error  # bf16 forward vs transformers' fp32 forward
    metrics = policy.train(batch)
    assert metrics["updates"] == 1 and metrics["skipped"] == 0
    assert torch.isfinite(torch.tensor([metrics["loss"], metrics["grad_norm"]])).all() and metrics["grad_norm"] > 0
    after = policy.compute_logprobs(batch)
    moved = (after - before).abs()[mask].mean().item()
    assert moved > 1e-2
    record_property("bf16_vs_hf_fp32_logprob_err", f"{bf16_error:.2e}")
    record_property("loss", f"{metrics['loss']:.4f}")
    record_property("grad_norm", f"{metrics['grad_norm']:.3f}")


def _advantage_rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from gdpo_megatron.algorithms.distributed_advantages import distributed_compute_advantages
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build

    torch.cuda.set_device(rank)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    algorithm = build(RecipeConfig, {}).algorithm
    rewards, groups = advantage_inputs(algorithm)
    bounds = [0, 7, 16][: world + 1] if world == 2 else [0, 16]  # a group straddles the ranks
    lo, hi = bounds[rank], bounds[rank + 1]
    result = distributed_compute_advantages(rewards[lo:hi], groups[lo:hi], algorithm)
    torch.save(result.advantages, f"{out}.{rank}")
    dist.destroy_process_group()


def advantage_inputs(algorithm):
    g = torch.Generator().manual_seed(5)
    k = len(algorithm.rewards) or 1
    rewards = torch.randint(0, 3, (16, k), generator=g).double()
    rewards[3, 0] = float("nan")
    return rewards, torch.arange(16) // 4


def test_advantage_all_gather_on_nccl_equals_cpu(tmp_path, record_property):
    import torch.multiprocessing as mp

    from gdpo_megatron.algorithms.advantages import compute_advantages
    from gdpo_megatron.config.recipe import RecipeConfig
    from gdpo_megatron.config.schema import build
    from gdpo_megatron.distributed.setup import free_port

    world = min(2, torch.cuda.device_count())  # NCCL allows one rank per GPU
    out = str(tmp_path / "adv")
    mp.start_processes(_advantage_rank, args=(world, free_port(), out), nprocs=world, start_method="spawn")
    got = torch.cat([torch.load(f"{out}.{r}") for r in range(world)])
    algorithm = build(RecipeConfig, {}).algorithm
    expected = compute_advantages(*advantage_inputs(algorithm), algorithm).advantages
    assert torch.equal(got, expected)  # bitwise: the math runs on the CPU, only the gather is NCCL
    record_property("ranks", world)


def test_hf_export_from_gpu(gpu_world, tiny_hf, tmp_path, record_property):
    from safetensors.torch import load_file

    from gdpo_megatron.conversion.exporter import save_hf_checkpoint
    from gdpo_megatron.megatron_policy import MegatronPolicy

    policy = MegatronPolicy(gpu_recipe(tiny_hf))
    assert next(policy.model[0].parameters()).is_cuda
    save_hf_checkpoint(policy.model, policy.recipe.policy, tmp_path / "export")
    source, exported = load_file(str(tiny_hf / "model.safetensors")), load_file(str(tmp_path / "export" / "model.safetensors"))
    assert source.keys() == exported.keys()
    assert all(torch.equal(source[k], exported[k]) for k in source)  # fp32 load -> GPU -> export is exact
    record_property("tensors", len(source))


def test_fp8_step_with_padding(gpu_world, tiny_hf, record_property):
    need_te()
    from gdpo_megatron.policy.master_weights import master_copies
    from gdpo_megatron.policy.model import unwrap
    from gdpo_megatron.megatron_policy import MegatronPolicy

    fp32 = MegatronPolicy(gpu_recipe(tiny_hf))
    exact = {n: p.detach().float().reshape(-1) for c in fp32.model for n, p in unwrap(c).named_parameters()}
    policy = MegatronPolicy(gpu_recipe(tiny_hf, precision=dict(FP8)))
    assert policy.settings.sequence_multiple == 16
    from megatron.core.fp8_utils import is_float8tensor

    params = {n: p for c in policy.model for n, p in unwrap(c).named_parameters()}
    names = {id(p): n for n, p in params.items()}
    masters = {names[id(p)]: m for p, m in master_copies(policy.optimizer)}
    fp8 = {n for n, p in params.items() if is_float8tensor(p)}
    assert fp8, "no parameter is FP8 (policy.precision.fp8_params had no effect)"
    stale = []
    for name, master in masters.items():
        # FP8 parameters: the loaded fp32 values themselves; bf16 ones: the bf16 parameter widened.
        want = exact[name][: master.numel()]
        if name not in fp8:
            want = want.to(torch.bfloat16).float()
        if not torch.equal(master.float(), want):
            stale.append(name)
    assert not stale, f"master weights are not the loaded HF values: {stale[:4]}"
    record_property("fp8_params", len(fp8))
    batch = odd_length_batch()  # lengths 9..30: every micro-batch is padded to a multiple of 16
    before = policy.compute_logprobs(batch)
    metrics = policy.train(batch)
    assert metrics["updates"] == 1 and torch.isfinite(torch.tensor(metrics["loss"]))
    mask = batch.response_mask != 0
    fp8_error = (before - fp32.compute_logprobs(batch)).abs()[mask].mean().item()
    assert fp8_error < 0.2, fp8_error
    record_property("fp8_vs_fp32_logprob_err", f"{fp8_error:.2e}")
    record_property("loss", f"{metrics['loss']:.4f}")


# Rows of 7, 12, 17, 16, 21, 26 tokens: micro-batches of two are 12, 17 (odd) and 26 wide unpadded.
SP_BATCH = {"response_base": 4, "response_step": 3}
SP_RUNS = (("plain", {"tensor": 2}, 1), ("sp", {"tensor": 2, "sequence_parallel": True}, 1),
           ("sp_pad8", {"tensor": 2, "sequence_parallel": True}, 8))


def _sequence_parallel_rank(rank: int, world: int, port: int, hf_path: str, out: str) -> None:
    import os

    from gdpo_megatron.config.policy import ParallelConfig
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.megatron_policy import MegatronPolicy
    from gdpo_megatron.policy.batch import micro_batches

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    init_distributed(ParallelConfig(tensor=2))
    results = {}
    for name, parallel, pad_to in SP_RUNS:
        policy = MegatronPolicy(gpu_recipe(hf_path, parallel=parallel, pad_sequence_to=pad_to))
        batch = odd_length_batch(**SP_BATCH)
        widths = [mb.input_ids.shape[1] for mb in micro_batches(batch, 2, pad_multiple=policy.settings.sequence_multiple)]
        before = policy.compute_logprobs(batch)
        metrics = policy.train(batch)
        after = policy.compute_logprobs(odd_length_batch(**SP_BATCH))
        results[name] = {"widths": widths, "multiple": policy.settings.sequence_multiple, "metrics": metrics,
                         "before": before.cpu(), "after": after.cpu(), "mask": batch.response_mask}
        del policy
        torch.cuda.empty_cache()
    torch.save(results, f"{out}.{rank}")
    destroy_distributed()


def test_sequence_parallel_padded_step_equals_unpadded_tp2(tiny_hf, tmp_path, record_property):
    """TP=2 with sequence parallelism (micro-batches padded to the TP multiple, then to 8) against TP=2
    without it on the same odd-length batch: loss, grad norm and logprobs before and after the step agree."""
    if torch.cuda.device_count() < 2:
        pytest.skip(f"sequence parallelism needs TP=2, one NCCL rank per GPU: 2 GPUs, this host has "
                    f"{torch.cuda.device_count()}")
    import torch.multiprocessing as mp

    from gdpo_megatron.distributed.setup import free_port

    out = str(tmp_path / "sp")
    mp.start_processes(_sequence_parallel_rank, args=(2, free_port(), str(tiny_hf), out), nprocs=2,
                       start_method="spawn")
    runs = torch.load(f"{out}.0", weights_only=False)
    plain = runs["plain"]
    mask = plain["mask"] != 0
    assert plain["multiple"] == 1 and plain["widths"] == [12, 17, 26]  # unpadded: an odd width occurs
    assert runs["sp"]["multiple"] == 2 and runs["sp"]["widths"] == [12, 18, 26]
    assert runs["sp_pad8"]["multiple"] == 8 and runs["sp_pad8"]["widths"] == [16, 24, 32]
    assert (plain["after"] - plain["before"]).abs()[mask].max() > 1e-2  # the step moved the weights
    for name in ("sp", "sp_pad8"):
        run = runs[name]
        for key in ("loss", "grad_norm"):
            assert run["metrics"][key] == pytest.approx(plain["metrics"][key], rel=1e-4, abs=1e-6), (name, key)
        torch.testing.assert_close(run["before"][mask], plain["before"][mask], rtol=0, atol=1e-4)
        torch.testing.assert_close(run["after"][mask], plain["after"][mask], rtol=0, atol=1e-4)
    rank1 = torch.load(f"{out}.1", weights_only=False)
    torch.testing.assert_close(rank1["sp_pad8"]["after"], runs["sp_pad8"]["after"])  # both TP ranks agree
    worst = max((runs[n]["after"] - plain["after"]).abs()[mask].max().item() for n in ("sp", "sp_pad8"))
    record_property("sp_vs_plain_max_logprob_diff", f"{worst:.2e}")
    record_property("loss", f"{plain['metrics']['loss']:.4f}")
