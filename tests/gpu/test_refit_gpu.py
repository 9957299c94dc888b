"""GPU smoke: CUDA-IPC buckets between two processes, engine refits over the GPU transports, and
HF export + refit after an FP8 step.

The engine runs in a child process (`EngineProcess`) on the GPU; this process holds the
policy and plays the exporting rank. The colocated engine (same GPU, CUDA IPC) is started
once for the module. Mismatch figures are reported as measured.
"""

from __future__ import annotations

import os

import pytest
import torch

from gpu_helpers import FP8, gpu_recipe, hf_logprobs, hf_rollout_mismatch, need_te, need_vllm, odd_length_batch

BUCKET_BYTES = 2**20


def _ipc_child(conn) -> None:
    from gdpo_megatron.generation.transports import cuda_ipc_open

    packed = conn.recv()
    views = cuda_ipc_open(packed, torch.cuda.current_device())
    conn.send([(name, tensor.cpu()) for name, tensor in views])
    views[0][1].add_(1)  # written through the handle: the parent must see it (shared, not copied)
    torch.cuda.synchronize()
    conn.send("written")
    conn.recv()


def test_cuda_ipc_bucket_round_trip_two_processes(record_property):
    import torch.multiprocessing as mp

    from gdpo_megatron.generation.transports import cuda_ipc_export, pack_bucket, unpack_bucket

    bucket = [("a", torch.arange(12, dtype=torch.float32).reshape(3, 4)), ("b", torch.randn(5, 7).to(torch.bfloat16)),
              ("c", torch.tensor([1, -2, 3], dtype=torch.int8))]
    packed = pack_bucket(bucket, device="cuda")
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_ipc_child, args=(child,))
    process.start()
    parent.send(cuda_ipc_export(packed))
    received = parent.recv()
    assert [n for n, _ in received] == ["a", "b", "c"]
    for (_, original), (_, got) in zip(bucket, received):
        assert got.dtype == original.dtype and torch.equal(got, original)
    assert parent.recv() == "written"
    assert torch.equal(unpack_bucket(packed)[0][1].cpu(), bucket[0][1] + 1)
    parent.send("done")
    process.join(timeout=60)
    assert process.exitcode == 0
    record_property("bytes", packed.nbytes)


def _start_engine(tiny_hf, device: int):
    from gdpo_megatron.generation.engine_process import EngineProcess
    from gdpo_megatron.generation.vllm_engine import EngineOptions

    options = EngineOptions(model_path=str(tiny_hf), dtype="float32", max_model_len=256, max_num_seqs=16,
                            enforce_eager=True, gpu_memory_utilization=0.2)
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(device)  # the spawned child sees only its GPU
    try:
        return EngineProcess(options, 0)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved


def _generate(engine, sampling):
    from test_generation_refit import PROMPTS

    engine.start_generate(list(enumerate(PROMPTS)), sampling)
    return engine.finish_generate()


def _refit_and_measure(policy, engine, refit, record_property) -> None:
    from test_generation_refit import mismatch

    from gdpo_megatron.generation import SamplingSettings
    from gdpo_megatron.policy.batch import build_policy_batch

    sampled = _generate(engine, SamplingSettings(n=4, temperature=1.0, max_new_tokens=10, seed=7))
    before = mismatch(policy, sampled)
    batch = build_policy_batch([r.prompt_token_ids for r in sampled], [r.token_ids for r in sampled])
    batch.advantages = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(len(sampled))])
    assert policy.train(batch)["updates"] == 1
    stale = mismatch(policy, sampled)
    refit()
    fresh = mismatch(policy, _generate(engine, SamplingSettings(n=4, temperature=1.0, max_new_tokens=10, seed=7)))
    record_property("mismatch_before_step", f"{before['mean']:.2e}")
    record_property("mismatch_stale", f"{stale['mean']:.2e}")
    record_property("mismatch_after_refit", f"{fresh['mean']:.2e}")
    assert stale["mean"] > 1e-2, stale
    assert fresh["mean"] < 5e-3 and fresh["mean"] < stale["mean"] / 5, fresh


class IpcEngine:
    """The colocated engine of this module and its CUDA-IPC channel `policy0` (this process sends)."""

    def __init__(self, engine, store) -> None:
        self.engine, self.store, self.refits = engine, store, 0

    def refit(self, policy) -> dict:
        from gdpo_megatron.generation.cuda_ipc import send_over_ipc

        self.refits += 1
        self.engine.start_call("receive_ipc", self.refits)
        sent = send_over_ipc(self.store, "policy0", self.refits, policy.export_hf_weights(), BUCKET_BYTES)
        assert tuple(self.engine.wait()) == (sent["tensors"], sent["bytes"])
        return sent


@pytest.fixture(scope="module")
def ipc_engine(gpu_world, tiny_hf):
    need_vllm()
    from gdpo_megatron.distributed.setup import free_port
    from gdpo_megatron.generation.cuda_ipc import control_store

    engine = _start_engine(tiny_hf, torch.cuda.current_device())  # colocated: the policy's GPU
    try:
        port = free_port()
        store = control_store("127.0.0.1", port, is_server=True)
        engine.start_call("join_ipc_channel", "127.0.0.1", port, ["policy0"])
        assert engine.wait() == ["policy0"]
        yield IpcEngine(engine, store)
    finally:
        engine.close()


def test_engine_refit_over_cuda_ipc(gpu_world, tiny_hf, ipc_engine, record_property):
    from gdpo_megatron.megatron_policy import MegatronPolicy

    policy = MegatronPolicy(gpu_recipe(tiny_hf))

    def refit():
        record_property("buckets", ipc_engine.refit(policy)["buckets"])

    _refit_and_measure(policy, ipc_engine.engine, refit, record_property)


def test_engine_refit_over_nccl_collective(gpu_world, tiny_hf, record_property):
    need_vllm()
    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL puts one rank per GPU: the policy and a separate engine need 2 GPUs, this host has "
                    f"{torch.cuda.device_count()}")
    from gdpo_megatron.distributed.setup import free_port
    from gdpo_megatron.generation.collective import broadcast_weights, join_refit_group
    from gdpo_megatron.megatron_policy import MegatronPolicy

    policy = MegatronPolicy(gpu_recipe(tiny_hf))
    engine = _start_engine(tiny_hf, (torch.cuda.current_device() + 1) % torch.cuda.device_count())
    try:
        port = free_port()
        engine.start_call("join_refit_group", "127.0.0.1", port, 1, 2, "nccl")
        group = join_refit_group("127.0.0.1", port, 0, 2, "nccl")
        assert engine.wait() == [1]

        def refit():
            engine.start_call("receive_broadcast")
            sent = broadcast_weights(group, policy.export_hf_weights(), BUCKET_BYTES)
            assert tuple(engine.wait()) == (sent["tensors"], sent["bytes"])
            record_property("buckets", sent["buckets"])

        _refit_and_measure(policy, engine, refit, record_property)
        group.close()
    finally:
        engine.close()


@pytest.fixture(scope="module")
def fp8_stepped(gpu_world, tiny_hf):
    """An FP8-parameter policy (TE) after one optimizer step on odd-length, padded micro-batches."""
    need_te()
    from gdpo_megatron.megatron_policy import MegatronPolicy

    policy = MegatronPolicy(gpu_recipe(tiny_hf, precision=dict(FP8)))
    metrics = policy.train(odd_length_batch())
    assert metrics["updates"] == 1 and torch.isfinite(torch.tensor(metrics["loss"]))
    return policy


def test_fp8_hf_export_after_step(fp8_stepped, tiny_hf, tmp_path, record_property):
    """After an FP8 step the export stream holds plain (dequantized) tensors in the checkpoint's names and
    shapes, they survive the refit wire format bit for bit, and transformers on the exported checkpoint
    gives the FP8 policy's logprobs up to FP8 compute error."""
    from megatron.core.fp8_utils import is_float8tensor
    from safetensors.torch import load_file

    from gdpo_megatron.conversion.exporter import save_hf_checkpoint
    from gdpo_megatron.generation.transports import pack_bucket, unpack_bucket
    from gdpo_megatron.policy.model import unwrap

    policy = fp8_stepped
    fp8 = [n for c in policy.model for n, p in unwrap(c).named_parameters() if is_float8tensor(p)]
    assert fp8, "no parameter is FP8 (policy.precision.fp8_params had no effect)"
    source = load_file(str(tiny_hf / "model.safetensors"))
    exported = list(policy.export_hf_weights())
    assert sorted(n for n, _ in exported) == sorted(source)
    for name, tensor in exported:
        assert type(tensor) is torch.Tensor and not is_float8tensor(tensor), (name, type(tensor))
        assert tensor.dtype in (torch.bfloat16, torch.float32) and tensor.shape == source[name].shape, name
        assert torch.isfinite(tensor).all(), name
    moved = sum(not torch.equal(t.float().cpu(), source[n].float()) for n, t in exported)
    assert moved > len(exported) // 2, moved  # the export carries the stepped weights, not the checkpoint
    unpacked = unpack_bucket(pack_bucket(exported, device="cuda"))
    assert all(torch.equal(t, u) for (_, t), (_, u) in zip(exported, unpacked))
    out = save_hf_checkpoint(policy.model, policy.recipe.policy, tmp_path / "fp8-export")
    probe = odd_length_batch(seed=4)
    mask = probe.response_mask != 0
    error = (policy.compute_logprobs(probe) - hf_logprobs(out, probe)).abs()[mask].mean().item()
    assert error < 0.2, error  # FP8 GEMMs vs fp32 on the dequantized weights; a garbled export is O(1) or NaN
    record_property("fp8_params", len(fp8))
    record_property("fp8_policy_vs_hf_export_logprob_err", f"{error:.2e}")


def test_fp8_refit_over_cuda_ipc_after_step(fp8_stepped, ipc_engine, tmp_path, record_property):
    """The FP8 policy's weights reach the colocated engine over CUDA IPC: the engine then samples with
    exactly the exported checkpoint (transformers fp32 on it as the reference)."""
    from gdpo_megatron.conversion.exporter import save_hf_checkpoint
    from gdpo_megatron.generation import SamplingSettings

    policy = fp8_stepped
    out = save_hf_checkpoint(policy.model, policy.recipe.policy, tmp_path / "fp8-export")
    sent = ipc_engine.refit(policy)
    rollouts = _generate(ipc_engine.engine, SamplingSettings(n=2, temperature=1.0, max_new_tokens=10, seed=3))
    error = hf_rollout_mismatch(out, rollouts)
    assert error < 5e-3, error  # the bound the fp32 refit checks use; other weights give > 1e-1
    record_property("bytes", sent["bytes"])
    record_property("engine_vs_hf_export_mismatch", f"{error:.2e}")
