"""Samples of different shapes in an ``.npz``: one member per sample, keyed ``NAME/0``, ``NAME/1``, … for each
model input NAME (``np.savez(path, **{f"input1/{i}": x for i, x in enumerate(samples)})``).

This is the safe form of "an .npz of object arrays": an object array can only be read by unpickling, which
can run any code the file's author wrote, so convopt refuses object arrays and never unpickles a file. Each
member is a plain numeric array read under the bounded-read rules of convopt.measure.npz (headers checked,
the memory needed counted before any data is read).
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from convopt.errors import DataError
from convopt.graph.shapes import Dim, input_dtype
from convopt.limits import check_data_memory
from convopt.measure.npz import ArrayHeader, NpzFile, check_real
from convopt.measure.samples import ragged
from convopt.text import safe

_KEY = re.compile(r"^(.+)/(0|[1-9][0-9]*)$")
KEYED_HELP = "store sample i of input NAME under the key NAME/i (np.savez(path, **{f'NAME/{i}': x ...}))"


def keyed_members(keys: Sequence[str], names: Sequence[str]) -> dict[str, dict[int, str]]:
    """{input name: {sample index: member}} for the members keyed NAME/i of a model input NAME."""
    out: dict[str, dict[int, str]] = {}
    for k in keys:
        m = _KEY.match(k)
        if m and m.group(1) in names:
            out.setdefault(m.group(1), {})[int(m.group(2))] = k
    return out


def _sample_count(path: Path, members: Mapping[str, Mapping[int, str]], names: Sequence[str]) -> int:
    missing = [n for n in names if n not in members]
    if missing:
        raise DataError(f"{path} keys samples per input but has none for input(s) "
                        f"{', '.join(repr(m) for m in missing)}; {KEYED_HELP}")
    counts = {}
    for name, idx in members.items():
        gaps = sorted(set(range(len(idx))) - set(idx))
        if gaps:
            raise DataError(f"{path} has {len(idx)} samples keyed '{name}/i' but no '{name}/{gaps[0]}'; number "
                            f"the samples 0, 1, 2, ... without gaps")
        counts[name] = len(idx)
    if len(set(counts.values())) != 1:
        raise DataError(f"{path} has different sample counts per input {counts}; give every input each sample")
    return next(iter(counts.values()))


def _sample_shape(name: str, key: str, header: ArrayHeader, dims: Sequence[Dim] | None, path: Path) -> tuple[int, ...]:
    """The sample's shape as fed, (1, *rest): a member of the input's rank with leading 1, or one rank lower
    (the leading axis added). Fixed dims of the input must match; dynamic ones are free."""
    shape = header.shape
    rank = len(dims) if dims is not None else len(shape)
    if len(shape) == rank - 1:
        shape = (1, *shape)
    want = ", ".join("?" if not isinstance(d, int) else str(d) for d in (dims or ())[1:])
    if len(shape) != rank or shape[0] != 1 or (dims is not None and any(
            isinstance(d, int) and d != s for d, s in zip(dims[1:], shape[1:]))):
        raise DataError(f"sample '{safe(key)}' in {path} has shape {header.shape}, but input '{name}' takes "
                        f"{list(dims) if dims is not None else '?'}; store each sample as ({want}) or (1, {want})")
    if 0 in shape:
        raise DataError(f"sample '{safe(key)}' in {path} is empty (shape {header.shape}); remove it")
    return tuple(shape)


def read_keyed(npz: NpzFile, path: Path, vis: Sequence[onnx.ValueInfoProto],
               dims: Mapping[str, tuple[Dim, ...] | None], limit: int | None) -> tuple[dict[str, np.ndarray], int]:
    """(ragged inputs, samples in the file): the first ``limit`` samples of every input, each (1, *shape_i)
    cast to the input's dtype, within the memory limit (counted on the headers first)."""
    names = [v.name for v in vis]
    members = keyed_members(list(npz.headers), names)
    plain = [n for n in names if n in npz.headers]
    if plain:
        raise DataError(f"{path} holds both an array '{plain[0]}' and samples keyed '{plain[0]}/i'; keep one")
    n_total = _sample_count(path, members, names)
    rows = min(n_total, limit or n_total)
    shapes: dict[str, list[tuple[int, ...]]] = {}
    need = 0
    for v in vis:
        dtype = input_dtype(v)
        shapes[v.name] = []
        for i in range(rows):
            key = members[v.name][i]
            header = npz.headers[key]
            check_real(header.dtype, f"sample '{safe(key)}' in {path}")
            shapes[v.name].append(_sample_shape(v.name, key, header, dims[v.name], path))
            need += header.nbytes + (0 if header.dtype == dtype else header.nbytes // header.dtype.itemsize
                                     * dtype.itemsize)
    check_data_memory(need, f"{rows} samples from {path}", "pass --limit to use fewer samples")
    inputs = {}
    for v in vis:
        dtype = input_dtype(v)
        arrays = [_cast(v.name, npz.read(members[v.name][i]).reshape(shapes[v.name][i]), dtype, path)
                  for i in range(rows)]
        inputs[v.name] = ragged(arrays)
    return inputs, n_total


def _cast(name: str, arr: np.ndarray, dtype: np.dtype, path: Path) -> np.ndarray:
    if np.issubdtype(dtype, np.integer) and np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise DataError(f"input '{name}' takes {dtype} but {path} holds non-integer floats; store integer values")
    return np.ascontiguousarray(arr.astype(dtype, copy=False))
