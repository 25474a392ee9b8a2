"""Ragged samples: samples of different shapes (an OCR model's text lines of different widths), one array per
sample, held in a 1-D numpy object array so that subsets, shards and sample order work as for any array.

A ragged array ``a`` has shape (n,) and dtype object; ``a[i]`` is sample i exactly as the model takes it or gives
it for that sample alone: (1, *shape_i) for an input, whatever one run returns for an output. Ragged data run
one sample at a time (no padding, no guess about where an output keeps its batch axis). Pure numpy.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

RUN_NOTE = "one sample at a time (samples differ in shape)"


def ragged(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """A 1-D object array whose items are ``arrays`` (never broadcast into one block, even when they share
    a shape)."""
    items = list(arrays)
    out = np.empty(len(items), dtype=object)
    for i, a in enumerate(items):
        out[i] = a
    return out


def is_ragged(a: object) -> bool:
    """True for a ragged array (1-D, dtype object)."""
    return isinstance(a, np.ndarray) and a.dtype == object and a.ndim == 1


def items(a: np.ndarray) -> list[np.ndarray]:
    """The per-sample arrays of a ragged array, in sample order."""
    return [np.asarray(x) for x in a]


def shapes(a: np.ndarray) -> list[tuple[int, ...]]:
    """Each sample's shape."""
    return [tuple(np.shape(x)) for x in a]


def rows(a: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) as one array, samples on axis 0: a slice of a fixed-shape array; for a ragged
    one, its samples concatenated on axis 0 (ValueError when their shapes differ)."""
    if not is_ragged(a):
        return a[start:stop]
    part = items(a[start:stop])
    if len({x.shape for x in part}) > 1:
        raise ValueError(f"samples {start}..{stop - 1} have different shapes {sorted({x.shape for x in part})}; "
                         "run them one at a time")
    return np.concatenate(part, axis=0)


def stacked(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per-sample arrays of one shape (1, *s) as one (n, *s) array, else None (shapes differ, or none)."""
    if not arrays or len({a.shape for a in arrays}) != 1:
        return None
    return np.concatenate(arrays, axis=0)


def sizes(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Elements per sample over every input, shape (n,)."""
    per = [np.array([np.size(x) for x in a], dtype=np.int64) for a in inputs.values()]
    return np.sum(per, axis=0)


def median_sample(inputs: dict[str, np.ndarray]) -> int:
    """The position of the sample of median size (elements over every input; the lower median, and of equal
    sizes the first in sample order): the representative sample that latency is timed on."""
    s = sizes(inputs)
    order = np.argsort(s, kind="stable")
    return int(order[(len(order) - 1) // 2])


def describe_shape(shape: Sequence[int]) -> str:
    """(1, 1, 64, 240) as '1x1x64x240'."""
    return "x".join(str(int(d)) for d in shape)


@dataclass(frozen=True)
class TimingSample:
    """Ragged data: the one sample latency is timed on, in every data role: its sample ``id``, its arrays as
    fed (1, *shape) per input, why it was chosen (the median size, or the shape --input-shape gives), and how
    many distinct shapes the data it was chosen from have (``shapes``)."""

    id: int
    feeds: dict[str, np.ndarray]
    why: str
    shapes: int = 1

    def describe(self) -> str:
        shape = ", ".join(f"{k} {describe_shape(a.shape)}" for k, a in self.feeds.items())
        return f"{shape} (sample {self.id}, {self.why})"


def timing_sample(inputs: dict[str, np.ndarray], index: np.ndarray,
                  want: Mapping[str, Sequence[int]] | None = None) -> TimingSample:
    """The first sample whose shapes are those ``want`` gives for every input (--input-shape), else the sample
    of median size (:func:`median_sample`)."""
    count = len(set(zip(*(shapes(a) for a in inputs.values()))))
    if want and set(want) >= set(inputs):
        same = [i for i in range(len(index))
                if all(tuple(inputs[k][i].shape) == tuple(want[k]) for k in inputs)]
        if same:
            i = same[0]
            return TimingSample(int(index[i]), {k: a[i] for k, a in inputs.items()}, "the shape of --input-shape",
                                count)
    i = median_sample(inputs)
    return TimingSample(int(index[i]), {k: a[i] for k, a in inputs.items()}, "the median size", count)
