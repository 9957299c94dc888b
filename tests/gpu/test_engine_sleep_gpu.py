"""GPU smoke: a colocated engine's sleep/wake cycle on one GPU frees memory and refits in between.

What the trainer does with colocated engines around every step: the engine sleeps (level 1:
weights to host RAM, KV cache dropped) while the policy trains, wakes its weights, is refit,
wakes its KV cache and generates. The engine (`VllmEngine`, `enable_sleep_mode`) runs in a
spawned child process of its own, as in an engine actor; `torch.cuda.mem_get_info` there reads
the device's free memory at each stage. The refit loads a second tiny model (another seed), so
after waking the engine must sample exactly that model (transformers fp32 as the reference),
not the one it slept with.
"""

from __future__ import annotations

import os

import pytest
import torch

from gpu_helpers import hf_rollout_mismatch, need_vllm

UTILIZATION = 0.1  # of the device: ~14 GiB on an H200, almost all of it KV cache for this model
PROMPTS = [[1, 5, 6, 7], [1, 40, 41, 42, 43], [1, 9, 100, 101]]


def _sleep_cycle_child(conn, first: str, second: str) -> None:
    from safetensors.torch import load_file

    from gdpo_megatron.distributed.setup import free_port
    from gdpo_megatron.generation import SamplingSettings
    from gdpo_megatron.generation.vllm_engine import EngineOptions, VllmEngine

    # A world of one for vLLM's external launcher (nothing inherited from the pytest process).
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))

    def free() -> int:
        torch.cuda.synchronize()
        return torch.cuda.mem_get_info()[0]

    try:
        torch.zeros(1, device="cuda")  # the CUDA context is not the engine's
        figures = {"free_before_engine": free()}
        engine = VllmEngine(EngineOptions(model_path=first, dtype="float32", max_model_len=256, max_num_seqs=8,
                                          enforce_eager=True, gpu_memory_utilization=UTILIZATION,
                                          enable_sleep_mode=True))
        sampling = SamplingSettings(n=2, temperature=1.0, max_new_tokens=10, seed=11)
        prompts = list(enumerate(PROMPTS))
        before = engine.generate(prompts, sampling)
        figures["free_awake"] = free()
        figures["tags_asleep"] = sorted(engine.sleep(1))
        figures["free_asleep"] = free()
        figures["tags_after_weights"] = sorted(engine.wake(["weights"]))
        figures["free_weights_awake"] = free()
        figures["loaded"] = engine.load_weights(iter(load_file(os.path.join(second, "model.safetensors")).items()))
        figures["tags_after_kv"] = sorted(engine.wake(["kv_cache"]))
        figures["free_kv_awake"] = free()
        after = engine.generate(prompts, sampling)
        engine.close()
        conn.send(("ok", figures, before, after))
    except Exception:
        import traceback

        conn.send(("error", traceback.format_exc(), None, None))


@pytest.fixture(scope="module")
def second_model(tmp_path_factory):
    from helpers.tiny_models import save_tiny_hf_model

    return save_tiny_hf_model(tmp_path_factory.mktemp("gpu-tiny-b") / "llama", "llama", seed=1)


def test_colocated_engine_sleep_frees_memory_then_wake_refit_generate(tiny_hf, second_model, record_property):
    need_vllm()
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_sleep_cycle_child, args=(child, str(tiny_hf), str(second_model)))
    process.start()
    if not parent.poll(240):  # engine start-up is well under a minute on an H100/H200
        process.kill()
        pytest.fail(f"the engine process sent nothing in 240 s (alive: {process.is_alive()}, "
                    f"exit code {process.exitcode})")
    status, figures, before, after = parent.recv()
    process.join(timeout=120)
    assert status == "ok", figures
    taken = figures["free_before_engine"] - figures["free_awake"]  # what the engine holds awake
    freed = figures["free_asleep"] - figures["free_awake"]
    weights = figures["free_asleep"] - figures["free_weights_awake"]
    print(f"[sleep] engine held {taken} B awake; sleep(1) freed {freed} B; waking the weights took {weights} B; "
          f"waking the KV cache took {figures['free_weights_awake'] - figures['free_kv_awake']} B")
    assert figures["tags_asleep"] == ["kv_cache", "weights"]
    assert figures["tags_after_weights"] == ["kv_cache"] and figures["tags_after_kv"] == []
    # Level 1 releases the weights and the KV cache: most of what the engine took (what stays is
    # vLLM's non-pool allocations and the caching allocator's reserve).
    assert taken > 0.5 * UTILIZATION * torch.cuda.mem_get_info()[1], taken
    assert freed > 0.5 * taken, (freed, taken)
    source = load_file(str(second_model / "model.safetensors"))
    model_bytes = sum(t.numel() * t.element_size() for t in source.values())
    assert 0 < weights < freed / 4 and weights >= 0.5 * model_bytes, (weights, model_bytes)  # weights only
    assert figures["free_kv_awake"] < figures["free_asleep"] - 0.5 * freed  # the KV cache is back
    assert figures["loaded"] == (len(source), model_bytes)
    # Before: the first model; after the refit between the wakes: the second one, exactly.
    assert hf_rollout_mismatch(tiny_hf, before) < 5e-3
    after_error = hf_rollout_mismatch(second_model, after)
    assert after_error < 5e-3, after_error
    assert hf_rollout_mismatch(tiny_hf, after) > 5e-2  # the refit really replaced the weights
    record_property("freed_bytes", freed)
    record_property("engine_bytes_awake", taken)
    record_property("weights_wake_bytes", weights)
    record_property("mismatch_after_refit", f"{after_error:.2e}")
