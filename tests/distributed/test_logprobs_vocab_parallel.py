"""Vocab-parallel logprobs and entropy at TP=2 equal a single-rank full-softmax computation.

Two real gloo processes (tests/distributed/test_logprobs_vocab_parallel_worker.py), each
holding one contiguous half of the (padded) vocabulary, run
`gdpo_megatron.policy.logprobs.vocab_parallel_logprobs`. The reference here is computed
independently in this process: torch.log_softmax over the unpadded vocabulary, gather
of the targets, entropy as -sum p log p. Cases cover an even vocabulary, padding rows
(vocab_size not divisible by TP) and temperatures != 1. The gradient that reaches each
rank's slice is checked too: the module claims it is the exact slice of the full
softmax's gradient (padding rows get none).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_logprobs_vocab_parallel_worker import CASES, SEED, case_logits  # noqa: E402

WORKER = Path(__file__).with_name("test_logprobs_vocab_parallel_worker.py")
TP = 2


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("vp_logprobs") / "out")
    port = _free_port()
    procs = []
    for rank in range(TP):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(TP), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), out], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=120)[0] for p in procs]
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    return [torch.load(f"{out}.rank{r}.pt", weights_only=False) for r in range(TP)]


def full_softmax(padded, real, temperature, index):
    """Single-rank reference with autograd: logprobs, entropy and d(loss)/d(full logits)."""
    logits, targets, w_logprob, w_entropy = case_logits(padded, real, SEED + index)
    logits = logits.double().requires_grad_(True)
    real = real if real is not None else padded
    log_p = torch.log_softmax(logits[..., :real] / temperature, dim=-1)
    logprobs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    ((logprobs * w_logprob.double()).sum() + (entropy * w_entropy.double()).sum()).backward()
    return logprobs.detach(), entropy.detach(), logits.grad


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_vocab_parallel_equals_full_softmax(ranks, index):
    name, padded, real, temperature = CASES[index]
    ref_logprobs, ref_entropy, ref_grad = full_softmax(padded, real, temperature, index)
    # The reference must not be trivially matched: entropies well above 0, logprobs spread out.
    assert ref_entropy.min() > 0.1 and ref_logprobs.std() > 0.5
    for result in ranks:
        got = result[name]
        # Every TP rank holds the full (all-reduced) logprobs and entropy.
        torch.testing.assert_close(got["logprobs"].double(), ref_logprobs, rtol=0, atol=1e-5)
        torch.testing.assert_close(got["entropy"].double(), ref_entropy, rtol=0, atol=1e-5)
        lo = got["tp_rank"] * got["width"]
        torch.testing.assert_close(got["grad"].double(), ref_grad[..., lo:lo + got["width"]], rtol=0, atol=1e-5)
    if real is not None:
        # Padding rows live on the last rank and must receive no gradient at all.
        assert torch.count_nonzero(ranks[-1][name]["grad"][..., real - (TP - 1) * ranks[-1][name]["width"]:]) == 0
