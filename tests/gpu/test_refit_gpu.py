"""GPU smoke: CUDA-IPC buckets between two processes, and engine refits over the GPU transports.

The engine runs in a child process (`EngineProcess`) on the GPU; this process holds the
policy and plays the exporting rank. Mismatch figures are reported as measured.
"""

from __future__ import annotations

import os

import pytest
import torch

from gpu_helpers import gpu_recipe

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


def _need_vllm():
    pytest.importorskip("vllm", reason="vLLM is not installed")


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


def test_engine_refit_over_cuda_ipc(gpu_world, tiny_hf, record_property):
    _need_vllm()
    from gdpo_megatron.distributed.setup import free_port
    from gdpo_megatron.generation.cuda_ipc import control_store, send_over_ipc
    from gdpo_megatron.megatron_policy import MegatronPolicy

    policy = MegatronPolicy(gpu_recipe(tiny_hf))
    engine = _start_engine(tiny_hf, torch.cuda.current_device())  # colocated: the policy's GPU
    try:
        port = free_port()
        store = control_store("127.0.0.1", port, is_server=True)
        engine.start_call("join_ipc_channel", "127.0.0.1", port, ["policy0"])
        assert engine.wait() == ["policy0"]

        def refit():
            engine.start_call("receive_ipc", 1)
            sent = send_over_ipc(store, "policy0", 1, policy.export_hf_weights(), BUCKET_BYTES)
            assert tuple(engine.wait()) == (sent["tensors"], sent["bytes"])
            record_property("buckets", sent["buckets"])

        _refit_and_measure(policy, engine, refit, record_property)
    finally:
        engine.close()


def test_engine_refit_over_nccl_collective(gpu_world, tiny_hf, record_property):
    _need_vllm()
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
