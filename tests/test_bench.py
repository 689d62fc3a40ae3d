"""The benchmark's pairing and statistics (the timings themselves live in `make bench`, not in tests)."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", Path(__file__).parent.parent / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sides_alternate_abba_and_keep_their_own_answers(bench):
    calls = []

    def side(name):
        def run():
            calls.append(name)
            return {"seconds": float(len(calls)), "side": name}

        return run

    a, b = bench.paired(side("ours"), side("theirs"), 4)
    assert calls == ["ours", "theirs", "theirs", "ours", "ours", "theirs", "theirs", "ours"]
    assert [r["side"] for r in a] == ["ours"] * 4 and [r["side"] for r in b] == ["theirs"] * 4
    assert [r["seconds"] for r in a] == [1.0, 4.0, 5.0, 8.0]


def test_stats_are_rates_median_min_max(bench):
    s = bench.stats(100, [{"seconds": 1.0}, {"seconds": 2.0}, {"seconds": 4.0}])
    assert s == {"median": 50.0, "min": 25.0, "max": 100.0}
