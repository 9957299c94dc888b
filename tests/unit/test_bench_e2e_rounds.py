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


def test_stolen_share_from_two_proc_stat_readings():
    bench = _bench()
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = bench.cpu_times("cpu  100 0 50 800 0 0 0 50 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    after = bench.cpu_times("cpu  200 0 100 1500 0 0 0 200 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert before == (50, 1000) and after == (200, 2000)
    assert bench.stolen_share(before, after) == 150 / 1000
    assert bench.stolen_share(None, after) is None
    assert bench.stolen_share(after, after) is None  # no time passed: unknown, not 0


def test_proc_stat_without_the_aggregate_line_is_refused():
    import pytest

    with pytest.raises(ValueError, match="aggregate cpu line"):
        _bench().cpu_times("intr 1 2 3\n")


def test_relative_spread_is_relative_to_the_fastest_probe():
    bench = _bench()
    assert bench.relative_spread([100.0, 80.0, 90.0, 95.0]) == 0.2
    assert bench.relative_spread([50.0]) == 0.0
    assert bench.relative_spread([]) == 0.0


def test_a_round_is_flagged_by_steal_or_by_either_probe_and_not_otherwise():
    bench = _bench()
    quiet = {"gflops": 160.0, "gbps": 40.0}
    fair = {"gdpo": {"steal": 0.01, "speed": [quiet, quiet]}, "trl": {"steal": None, "speed": [quiet, quiet]}}
    assert bench.unfair_reasons(fair) == []
    stolen = {**fair, "trl": {"steal": 0.12, "speed": [quiet, quiet]}}
    assert bench.unfair_reasons(stolen) == ["the host took more than 5% of the CPU time during trl"]
    slow_copy = {**fair, "gdpo": {"steal": 0.0, "speed": [quiet, {"gflops": 150.0, "gbps": 20.0}]}}
    # matmul 150 vs 160 is within 15%; copy 20 vs 40 is 50% apart
    assert bench.unfair_reasons(slow_copy) == ["the machine's copy speed varied by 50% (probes above)"]


def test_a_round_whose_completions_differ_in_length_is_flagged():
    bench = _bench()

    def side(lengths):
        return {"steal": 0.0, "steps": [{"time/step": 0.5, bench.COMPLETION: n} for n in lengths]}

    # Medians after the first (warm-up) step: 16 and 14 differ by 12.5%, 16 and 3 by 81%.
    close = {"gdpo": side([9.0, 16.0, 16.0, 16.0]), "trl": side([15.0, 14.0, 14.0, 14.0])}
    assert bench.unfair_reasons(close, skip=1) == []
    apart = {"gdpo": side([9.0, 16.0, 16.0, 16.0]), "trl": side([15.0, 3.0, 3.0, 3.0])}
    assert bench.unfair_reasons(apart, skip=1) == [
        "the sides' completions differ by 81% in length (gdpo 16.0 tokens, trl 3.0 tokens): their steps did "
        "unequal work"]
    # The warm-up step is left out: with it, gdpo's median would be 16 and trl's 8.5.
    assert bench.unfair_reasons({"gdpo": side([16.0, 16.0]), "trl": side([16.0, 3.0])}, skip=0) != []
    assert bench.unfair_reasons({"gdpo": side([16.0, 16.0]), "trl": side([3.0, 16.0])}, skip=1) == []
