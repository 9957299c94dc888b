"""GPU smoke: the policy's NCCL/bf16/FP8 paths, the advantage all-gather on NCCL, HF export from the GPU."""

from __future__ import annotations

import pytest
import torch

from gpu_helpers import gpu_recipe, odd_length_batch


def hf_logprobs(hf_path, batch) -> torch.Tensor:
    """Token-aligned fp32 logprobs of transformers' model on the GPU (an independent reference)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(hf_path), torch_dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        logits = model(batch.input_ids.cuda()).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch.input_ids[:, 1:].cuda().unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(lp, (1, 0)).cpu() * (batch.response_mask != 0)


def test_nccl_bf16_train_step_odd_lengths(gpu_world, tiny_hf, record_property):
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.transformer.module import Float16Module

    from gdpo_megatron.policy.policy import MegatronPolicy

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
    from gdpo_megatron.policy.policy import MegatronPolicy

    policy = MegatronPolicy(gpu_recipe(tiny_hf))
    assert next(policy.model[0].parameters()).is_cuda
    save_hf_checkpoint(policy.model, policy.recipe.policy, tmp_path / "export")
    source, exported = load_file(str(tiny_hf / "model.safetensors")), load_file(str(tmp_path / "export" / "model.safetensors"))
    assert source.keys() == exported.keys()
    assert all(torch.equal(source[k], exported[k]) for k in source)  # fp32 load -> GPU -> export is exact
    record_property("tensors", len(source))


def test_fp8_step_with_padding(gpu_world, tiny_hf, record_property):
    pytest.importorskip("transformer_engine", reason="Transformer Engine is not installed")
    from gdpo_megatron.policy.master_weights import master_copies
    from gdpo_megatron.policy.model import unwrap
    from gdpo_megatron.policy.policy import MegatronPolicy

    fp32 = MegatronPolicy(gpu_recipe(tiny_hf))
    exact = {n: p.detach().float().reshape(-1) for c in fp32.model for n, p in unwrap(c).named_parameters()}
    policy = MegatronPolicy(gpu_recipe(tiny_hf, precision={"dtype": "bf16", "fp8": "e4m3", "fp8_params": True}))
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
