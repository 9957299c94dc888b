"""One training step (two mini-batches) on TP2, PP2, DP2 and TP2xPP2 equals the single-process step.

Real megatron-core on gloo, one OS process per rank (tests/distributed/test_train_step_worker.py).
Compared per aggregation mode: loss, grad norm, and the logprobs of a probe batch under the
updated weights (a layout-independent view of the whole parameter set). DP2 runs with a
different micro-batch size than the reference: equal updates there are the global
normalization proof. The single-process run also checks the NaN skip. On every layout, a
single on-policy update whose old logprobs come from the training forward is bit-identical
(metrics, old logprobs, weights) to the one with a separate old-logprobs forward.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("test_train_step_worker.py")
MODES = ("token-mean", "seq-mean-token-mean")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, world, tp, pp, mbs, init_dir):
    out = str(tmp_path / f"w{world}_tp{tp}_pp{pp}_mbs{mbs}")
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tp), str(pp), str(mbs), out, str(init_dir)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-4000:]}"
    return [torch.load(f"{out}.rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("init") / "weights"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, init_dir):
    return launch(tmp_path_factory.mktemp("ref"), world=1, tp=1, pp=1, mbs=1, init_dir=init_dir)[0]


def assert_same_step(result, reference):
    for mode in MODES:
        got, ref = result[mode], reference[mode]
        # The step must actually move the weights, else equality would prove nothing.
        assert (ref["after"] - ref["before"]).abs().max() > 1e-2
        for name in ("loss", "pg_loss", "kl_ref", "entropy", "grad_norm", "clip_fraction", "ratio_max"):
            assert got["metrics"][name] == pytest.approx(ref["metrics"][name], rel=1e-4, abs=1e-6), (mode, name)
        assert got["metrics"]["skipped"] == 0
        torch.testing.assert_close(got["after"], ref["after"], rtol=1e-4, atol=1e-4)


def assert_on_policy_update_exact(result):
    """Old logprobs taken from the training forward give bit-identical metrics, old logprobs and weights."""
    fused, two_pass = result["on_policy"]["fused"], result["on_policy"]["two_pass"]
    assert two_pass["metrics"]["updates"] == 1 and two_pass["metrics"]["grad_norm"] > 0
    assert two_pass["forwards"] == 2 * fused["forwards"] > 0  # the fused update runs one forward pass, not two
    assert fused["metrics"] == two_pass["metrics"]
    assert torch.equal(fused["old"], two_pass["old"])
    assert len(fused["params"]) == len(two_pass["params"])
    for got, want in zip(fused["params"], two_pass["params"]):
        assert torch.equal(got, want)


@pytest.mark.slow
def test_single_process_reference_and_nan_skip(reference):
    nan = reference["nan"]
    assert nan["metrics"]["skipped"] == 1 and nan["metrics"]["updates"] == 0
    assert nan["unchanged"], "a skipped update must leave the weights untouched"
    for mode in MODES:
        assert reference[mode]["metrics"]["updates"] == 2
    assert_on_policy_update_exact(reference)


@pytest.mark.slow
@pytest.mark.parametrize("world,tp,pp,mbs", [
    (2, 2, 1, 2),   # TP2
    (2, 1, 2, 1),   # PP2 (1F1B over 4 micro-batches)
    (2, 1, 1, 2),   # DP2 with micro-batch size 2 (reference: 1)
    (4, 2, 2, 1),   # TP2 x PP2
], ids=["tp2", "pp2", "dp2-mbs2", "tp2xpp2"])
def test_layout_equals_single_process(tmp_path, reference, init_dir, world, tp, pp, mbs):
    results = launch(tmp_path, world, tp, pp, mbs, init_dir)
    for result in results:  # every rank reports the same numbers
        assert_same_step(result, reference)
        assert_on_policy_update_exact(result)
