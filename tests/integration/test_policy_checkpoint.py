"""Policy checkpoint: save -> load -> step equals an uninterrupted run, bit-exactly on CPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("test_policy_checkpoint_worker.py")


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path):
    # An in-process vLLM engine of an earlier test may have left MASTER_PORT in this process's
    # environment; a lone rank must not try to bind that (possibly reused) port.
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    env.update(RANK="0", WORLD_SIZE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt", weights_only=False)
    assert torch.equal(result["a"], result["c"])
    for name in ("loss", "grad_norm", "lr", "entropy"):
        assert result["ma"][name] == result["mc"][name], name
    # Update 2 ends the 2-step warmup at the peak lr; a schedule that was not restored would
    # start over at warmup step 1 (lr 5e-3), and one restored off by one would have decayed.
    assert result["mc"]["lr"] == 1e-2
    assert result["updates"] == (2, 2)
    assert (tmp_path / "ckpt").is_dir() and not (tmp_path / "ckpt.partial").exists()
