"""Latency statistics and the interleaved timing loop."""
from __future__ import annotations

import numpy as np
import pytest

from convopt.measure.latency import LatencyStats, measure_latency, speedup, time_sessions
from convopt.measure.ort import OrtSettings
from tests.test_measure_helpers import tiny_classifier


def test_stats_from_known_times() -> None:
    s = LatencyStats.from_times([0.004, 0.001, 0.003, 0.002, 0.010], warmup=2, batch=4)
    assert s.median_ms == pytest.approx(3.0)
    assert s.q1_ms == pytest.approx(2.0) and s.q3_ms == pytest.approx(4.0) and s.iqr_ms == pytest.approx(2.0)
    assert s.min_ms == pytest.approx(1.0) and s.mean_ms == pytest.approx(4.0)
    assert (s.repeats, s.warmup, s.batch) == (5, 2, 4)
    assert s.to_dict()["median_ms"] == pytest.approx(3.0)


def test_speedup_is_ratio_of_medians() -> None:
    base = LatencyStats.from_times([0.004] * 3, 0)
    cand = LatencyStats.from_times([0.002] * 3, 0)
    assert speedup(base, cand) == pytest.approx(2.0)
    assert speedup(cand, base) == pytest.approx(0.5)


class FakeSession:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def run(self, names, feeds):  # noqa: ANN001, ANN201
        self.log.append(self.name)
        return [next(iter(feeds.values()))]


def test_runs_are_warmed_up_then_interleaved() -> None:
    log: list[str] = []
    stats = time_sessions([FakeSession("a", log), FakeSession("b", log)], {"X": np.zeros((3, 2))},
                          OrtSettings(warmup=2, repeats=3))
    assert log == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert [(s.repeats, s.warmup, s.batch) for s in stats] == [(3, 2, 3), (3, 2, 3)]


def test_measure_latency_real_sessions() -> None:
    big, small = tiny_classifier(1, hw=(64, 64), classes=64), tiny_classifier(1, hw=(8, 8))
    feeds_big = {"X": np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)}
    stats = measure_latency([big, big.SerializeToString()], feeds_big, OrtSettings(warmup=1, repeats=5, threads=1))
    assert len(stats) == 2
    for s in stats:
        assert s.repeats == 5 and s.warmup == 1 and s.batch == 1
        assert 0 < s.min_ms <= s.q1_ms <= s.median_ms <= s.q3_ms and s.iqr_ms >= 0
    # a 64×64, 64-class conv costs far more than an 8×8, 4-class one: 256× the MACs
    small_feeds = {"X": feeds_big["X"][:, :, :8, :8].copy()}
    (b,) = measure_latency([big], feeds_big, OrtSettings(warmup=2, repeats=15, threads=1))
    (s,) = measure_latency([small], small_feeds, OrtSettings(warmup=2, repeats=15, threads=1))
    assert speedup(b, s) > 1.5
