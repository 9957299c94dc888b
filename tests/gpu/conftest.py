"""The GPU smoke suite (scripts/gpu_smoke.sh): every test here is marked `gpu` and skipped without CUDA.

Each test reports one line, `[gpu-smoke] PASS|SKIP|FAIL <test>: <figures or reason>`, to the
file named by $GPU_SMOKE_REPORT (the script prints it); figures come from
`record_property(name, value)`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "integration"))  # shared refit helpers (test_generation_refit)


def pytest_collection_modifyitems(config, items):
    no_cuda = pytest.mark.skip(reason="no CUDA device (torch.cuda.is_available() is false)")
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(no_cuda)


def _reason(report) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    text = getattr(report, "longreprtext", "") or ""
    lines = [line for line in text.splitlines() if line.startswith("E ")]
    return (lines[0][1:].strip() if lines else text.strip().splitlines()[-1] if text.strip() else "")[:300]


def pytest_runtest_logreport(report):
    path = os.environ.get("GPU_SMOKE_REPORT")
    if not path or HERE not in Path(report.fspath).resolve().parents:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.passed:
            status, detail = "PASS", ", ".join(f"{k}={v}" for k, v in report.user_properties)
        elif report.skipped:
            status, detail = "SKIP", _reason(report)
        else:
            status, detail = "FAIL", _reason(report)
        with open(path, "a") as out:
            out.write(f"[gpu-smoke] {status} {report.nodeid.split('::')[-1]}: {detail}\n")


@pytest.fixture(scope="session")
def gpu_world():
    """One NCCL process group of one rank on GPU 0 (megatron's TP/PP/DP groups included)."""
    from gdpo_megatron.config.policy import ParallelConfig
    from gdpo_megatron.distributed.setup import destroy_distributed, init_distributed

    state = init_distributed(ParallelConfig())
    assert state.backend == "nccl"
    yield state
    destroy_distributed()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    from helpers.tiny_models import save_tiny_hf_model

    return save_tiny_hf_model(tmp_path_factory.mktemp("gpu-tiny") / "llama", "llama")
