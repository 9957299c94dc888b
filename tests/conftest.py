"""Shared test set-up: deterministic, single-threaded torch, no network, strict metric keys."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every metric key a test (or a run it starts) writes must be declared in gdpo_megatron/metrics/keys.py.
os.environ.setdefault("GDPO_STRICT_METRICS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent
