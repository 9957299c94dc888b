"""Padding micro-batches to a sequence multiple (what sequence parallelism and FP8 need) changes nothing.

Real megatron-core at TP=2 on gloo, one OS process per rank (test_sequence_padding_worker.py).
Sequence parallelism is refused on a CPU host (parallel_layout.host_problems), so here the
padding is tested alone (forced through `policy.pad_sequence_to`). The GPU suite has the
sequence-parallel counterpart, TP=2 with sequence parallelism against TP=2 without it
(tests/gpu/test_policy_gpu.py::test_sequence_parallel_padded_step_equals_unpadded_tp2; it
needs 2 GPUs and has not run yet), and an FP8 step on micro-batches padded to 16, which has
no unpadded FP8 counterpart to compare with (Transformer Engine refuses those lengths). Same
initial weights, same odd-length batch: loss, grad norm and the updated logprobs must agree
with the unpadded step.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gdpo_megatron.config.recipe import RecipeConfig
from gdpo_megatron.config.schema import build
from gdpo_megatron.policy.padding import sequence_multiple

WORKER = Path(__file__).with_name("test_sequence_padding_worker.py")


def policy(**sections):
    return build(RecipeConfig, {"policy": sections}).policy


def test_sequence_multiple_rules():
    assert sequence_multiple(policy()) == 1
    assert sequence_multiple(policy(parallel={"tensor": 4})) == 1
    assert sequence_multiple(policy(parallel={"tensor": 4, "sequence_parallel": True})) == 4
    fp8 = {"fp8": "e4m3"}
    assert sequence_multiple(policy(precision=fp8)) == 16
    assert sequence_multiple(policy(parallel={"tensor": 2, "sequence_parallel": True}, precision=fp8)) == 32
    assert sequence_multiple(policy(parallel={"tensor": 2, "sequence_parallel": True}, pad_sequence_to=3)) == 6


@pytest.mark.slow
def test_padded_step_equals_unpadded_step_at_tp2(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "pad")
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                   OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), "2", out], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    plain, padded = torch.load(f"{out}.rank0.pt", weights_only=False).values()
    # The padded run really padded: every micro-batch is a multiple of 8, some wider than the batch.
    assert all(w % 8 == 0 for w in padded["widths"]) and max(padded["widths"]) > padded["batch_width"]
    assert any(w % 8 for w in plain["widths"])
    mask = plain["mask"] != 0
    torch.testing.assert_close(padded["before"][mask], plain["before"][mask], rtol=0, atol=1e-6)
    for name in ("loss", "pg_loss", "entropy", "grad_norm"):
        assert padded["metrics"][name] == pytest.approx(plain["metrics"][name], rel=1e-5, abs=1e-7), name
    assert padded["metrics"]["global_tokens"] == plain["metrics"]["global_tokens"]
    assert (plain["after"] - plain["before"]).abs()[mask].max() > 1e-2  # the step moved the weights
    torch.testing.assert_close(padded["after"][mask], plain["after"][mask], rtol=1e-5, atol=1e-5)
    rank1 = list(torch.load(f"{out}.rank1.pt", weights_only=False).values())
    torch.testing.assert_close(rank1[1]["after"], padded["after"])  # both TP ranks agree
