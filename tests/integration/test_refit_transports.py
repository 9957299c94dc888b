"""Refit over the CPU-capable transports from a real Megatron policy into real vLLM CPU engines.

The policy (megatron-core on gloo) lives in this process; two vLLM CPU engines each run in a
child process of their own. One optimizer step moves the policy away from the engines
(mismatch > 1e-2); after a refit over the transport the engines' logprobs equal the updated
policy's again (< 1e-3), exactly as in test_generation_refit.py.

- collective: this process is rank 0 of a gloo refit group whose other members are the two
  engines (joined from their own processes), and broadcasts the buckets to both at once.
- object_store: the same buckets through Ray's object store (the `RefitSender.export_weights`
  buckets, fetched and shared-memory fanned out by `GenerationWorker.update_weights`).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers.tiny_models import save_tiny_hf_model  # noqa: E402
from test_generation_refit import PROMPTS, mismatch  # noqa: E402

from gdpo_megatron.config.recipe import RecipeConfig  # noqa: E402
from gdpo_megatron.config.schema import build, to_dict  # noqa: E402
from gdpo_megatron.generation import SamplingSettings  # noqa: E402

pytestmark = pytest.mark.slow

SAMPLED = SamplingSettings(n=4, temperature=1.0, max_new_tokens=10, seed=7)
GREEDY = SamplingSettings(n=1, temperature=0.0, max_new_tokens=10)
BUCKET_BYTES = 2**19


class Concurrently:
    """Run `fn` in a thread (the engines' side) while this thread plays rank 0; `result()` joins it."""

    def __init__(self, fn, *args) -> None:
        self.value, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self.thread.start()

    def _run(self, fn, args) -> None:
        try:
            self.value = fn(*args)
        except BaseException as exc:  # re-raised in result()
            self.error = exc

    def result(self):
        self.thread.join(timeout=300)
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed
    from gdpo_megatron.orchestration.generation_worker import GenerationWorker
    from gdpo_megatron.megatron_policy import MegatronPolicy

    path = save_tiny_hf_model(tmp_path_factory.mktemp("tiny") / "llama", "llama")
    recipe = build(RecipeConfig, {
        "policy": {"model": {"hf_path": str(path)}, "micro_batch_size": 8,
                   "optimizer": {"lr": 5e-3, "weight_decay": 0.0, "clip_grad": 0.0, "distributed": False}},
        "generation": {"backend": "vllm", "colocated": False, "num_engines": 2, "cpu_kv_cache_mb": 32,
                       "max_model_len": 256, "max_num_seqs": 16, "refit": {"bucket_mb": 0.5},
                       "sampling": {"temperature": 1.0, "max_new_tokens": 10}},
    })
    from gdpo_megatron.generation import create_backend
    from gdpo_megatron.orchestration.refit import RefitReceiver

    class TwoEngineHost(RefitReceiver):
        """The engine actor's receiving side (its RefitReceiver methods and update_weights) over one
        backend holding two engine processes, so one test process drives both engines."""

        update_weights = GenerationWorker.update_weights

        def __init__(self, backend) -> None:
            self.backend = backend

        def close(self) -> None:
            self.backend.close()

    init_distributed(recipe.policy.parallel)
    policy = MegatronPolicy(recipe)
    worker = TwoEngineHost(create_backend(recipe, str(path)))
    yield policy, worker
    worker.close()
    destroy_distributed()


def train_one_step(policy, rollouts) -> None:
    from gdpo_megatron.policy.batch import build_policy_batch

    batch = build_policy_batch([r.prompt_token_ids for r in rollouts], [r.token_ids for r in rollouts])
    # Alternate signs: push half the rollouts up and half down, a large, deterministic change.
    batch.advantages = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(len(rollouts))])
    assert policy.train(batch)["updates"] == 1


def check_refit(policy, backend, refit) -> dict:
    sampled = backend.generate(PROMPTS, SAMPLED)
    train_one_step(policy, sampled)
    stale = mismatch(policy, sampled)
    assert stale["mean"] > 1e-2, stale  # the policy moved away from the engines' weights
    moved = refit()
    fresh = backend.generate(PROMPTS, GREEDY)
    assert mismatch(policy, fresh)["max"] < 1e-3
    resampled = backend.generate(PROMPTS, SAMPLED)
    assert mismatch(policy, resampled)["max"] < 1e-3
    # Both engines serve the new weights: greedy rollouts come from engine 0 and engine 1.
    per_engine = [r for r in fresh if r.prompt_index in (0, len(PROMPTS) - 1)]
    assert len(per_engine) == 2 and mismatch(policy, per_engine)["max"] < 1e-3
    return moved


def test_collective_refit_over_gloo_reaches_both_engines(stack):
    from gdpo_megatron.generation.collective import broadcast_weights, join_refit_group
    from gdpo_megatron.orchestration.cluster import free_port

    policy, worker = stack
    backend = worker.backend
    assert len(backend.remote) == 2 and worker.refit_group_size() == 2
    port = free_port()
    joined = Concurrently(worker.join_refit_group, "127.0.0.1", port, 1, 3, "gloo")
    group = join_refit_group("127.0.0.1", port, 0, 3, "gloo")
    assert joined.result() == [1, 2]

    version = backend.weight_version
    engine_versions = [e.weight_version for e in backend.remote]

    def refit():
        received = Concurrently(worker.receive_broadcast)
        sent = broadcast_weights(group, policy.export_hf_weights(), BUCKET_BYTES)
        got = received.result()
        assert got["tensors"] == sent["tensors"] and got["bytes"] == sent["bytes"]
        return sent

    sent = check_refit(policy, backend, refit)
    params = sum(p.numel() for p in torch.nn.ModuleList(policy.model).parameters())
    assert sent["bytes"] >= 4 * params - 4 * 1024  # every fp32 weight moved (padded vocab rows are cut)
    assert sent["buckets"] >= 2
    assert backend.weight_version == version + 1
    assert [e.weight_version for e in backend.remote] == [v + 1 for v in engine_versions]
    group.close()


def test_object_store_refit_reaches_both_engines(stack, tmp_path):
    import ray

    from gdpo_megatron.orchestration.cluster import short_temp_dir
    from gdpo_megatron.orchestration.refit import RefitSender

    policy, worker = stack
    sender = RefitSender()
    sender.policy, sender.rank = policy, 0
    temp, _ = short_temp_dir(tmp_path / "ray")
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False)
    try:
        def refit():
            refs = sender.export_weights(BUCKET_BYTES)
            assert len(refs) >= 2
            return worker.update_weights(refs)

        check_refit(policy, worker.backend, refit)
    finally:
        ray.shutdown()
