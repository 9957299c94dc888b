"""benchmarks/bench_e2e.py measures the two sides in an order that spreads a load drift over both."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_e2e.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_e2e", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rounds_alternate_abba_and_one_side_runs_alone():
    bench = _bench()
    assert bench.round_order(1, None) == ["gdpo", "trl"]
    assert bench.round_order(3, None) == ["gdpo", "trl", "trl", "gdpo", "gdpo", "trl"]
    assert bench.round_order(2, "trl") == ["trl", "trl"]


def test_warm_up_steps_are_left_out_of_the_median():
    bench = _bench()
    assert bench.median_after([9.0, 1.0, 2.0, 3.0], 1) == 2.0
    assert bench.median_after([9.0], 1) == 9.0  # nothing after the warm-up: the only value
