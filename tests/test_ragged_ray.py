"""The Ray executor on samples of different shapes: shards of whole samples on 2 workers give the local
executor's figures to the last bit. Skipped without the ray extra (pip install -e ".[test,ray]")."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import fields

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='the ray extra is not installed (pip install -e ".[test,ray]")')

from convopt.measure.evaluator import Evaluator  # noqa: E402
from convopt.measure.executor import ExecutorOptions, LocalExecutor  # noqa: E402
from convopt.measure.plugin import TaskMetric  # noqa: E402
from convopt.measure.ray_executor import RayExecutor  # noqa: E402
from tests.ragged_helpers import ctc_like_model  # noqa: E402
from tests.test_ragged_eval import FAST, _data  # noqa: E402


@pytest.fixture(scope="module")
def executor() -> Iterator[RayExecutor]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
             object_store_memory=100 * 1024 * 1024)
    ex = RayExecutor(ExecutorOptions("ray", shard_size=3), threads=1)
    yield ex
    ex.close()
    ray.shutdown()


def _widest(outputs, labels, inputs) -> np.ndarray:
    """A metric that needs the per-sample lists: each sample's own width."""
    return np.array([float(x.shape[3]) for x in inputs["x"]])


def test_ray_shards_of_ragged_data_give_the_local_figures(executor: RayExecutor) -> None:
    data = _data(10)
    metric = TaskMetric.from_callable(_widest)
    got, want = (Evaluator(ctc_like_model(), data, FAST, measure_latency=False, metric=metric, executor=ex)
                 .measure(ctc_like_model(shift=-1.0), "shifted", timed=False) for ex in (executor, LocalExecutor(1000)))
    assert executor.info().shards == {"evaluation": 4}  # 10 samples, shards of about 3
    assert got.to_dict() | {"seconds": 0} == want.to_dict() | {"seconds": 0}
    for f in fields(got.outcomes):
        a, b = getattr(got.outcomes, f.name), getattr(want.outcomes, f.name)
        assert (a is None and b is None) or np.array_equal(a, b), f.name
    np.testing.assert_array_equal(got.outcomes.score_after, [x.shape[3] for x in data.inputs["x"]])
    sums = [ex.map_reduce(ctc_like_model(), ["r1"], data, lambda t: (t["r1"].sum(axis=(0, 2, 3)),), FAST)[0]
            for ex in (executor, LocalExecutor(3))]
    np.testing.assert_array_equal(sums[0], sums[1])
