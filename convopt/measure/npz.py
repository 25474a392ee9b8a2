"""Bounded reads of ``.npy`` files and ``.npz`` members: every header is read and checked before any data.

An array is read only when its dtype is real numeric (numpy kinds b, i, u, f: no complex, structured,
string, object or datetime data), when the bytes its file (or zip member) declares match its header's
shape × itemsize, and then only its first ``rows`` rows (contiguous in C order; a Fortran-order array is
read whole and sliced). The zip member's declared size is compared before decompressing, so a small
``.npz`` that declares gigabytes is caught by the memory check (convopt.limits) before it is inflated.
"""
from __future__ import annotations

import math
import os
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npformat

from convopt.errors import DataError
from convopt.text import safe

REAL_KINDS = "biuf"


@dataclass(frozen=True)
class ArrayHeader:
    """What an .npy header declares: shape (n, ...), dtype, memory order, and the header's length."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    header_bytes: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one sample (one index of axis 0)."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(fh: IO[bytes], where: str, real: bool = True) -> ArrayHeader:
    """Parse an .npy header from ``fh`` (positioned at its start); DataError when it is not one, or (``real``)
    when its dtype is not real numbers."""
    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
        else:
            raise DataError(f"{where} is an .npy of version {version}, which holds structured data; store a plain "
                            "numeric array")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DataError(f"cannot read {where} as an .npy array: {safe(str(exc))[:160]}") from None
    if any(int(d) < 0 for d in shape):
        raise DataError(f"{where} declares a negative dimension {tuple(shape)}; write it again")
    header = ArrayHeader(tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran), fh.tell())
    if real:
        check_real(header.dtype, where)
    return header


def check_real(dtype: np.dtype, where: str) -> None:
    """DataError unless ``dtype`` is bool, integer or floating point (what the model's inputs take)."""
    if dtype.kind not in REAL_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        what = {"c": "complex numbers", "V": "structured records", "U": "strings", "S": "bytes",
                "O": "Python objects", "M": "dates", "m": "time spans"}.get(dtype.kind, f"dtype {dtype}")
        if dtype.kind == "O":  # an object array is read by unpickling, which runs whatever code the file holds
            raise DataError(f"{where} holds Python objects ({dtype}), which only pickle reads, and convopt never "
                            "unpickles a file; store real numbers, and samples of different shapes as one array "
                            "each under the keys NAME/0, NAME/1, ... of an .npz")
        raise DataError(f"{where} holds {what} ({dtype}); store real numbers (bool, integer or float)")


READ_CHUNK = 4 << 20


def read_rows(fh: IO[bytes], header: ArrayHeader, available: int, rows: int | None, where: str) -> np.ndarray:
    """The first ``rows`` rows (all when None) of the array whose data starts at ``fh``'s position.
    ``available``: the bytes the file or member declares after the header."""
    if available < header.nbytes:
        raise DataError(f"{where} is truncated: its header declares {header.shape} {header.dtype} "
                        f"({header.nbytes} bytes) but it holds {max(available, 0)}; write it again")
    take = header.rows if rows is None or header.fortran or not header.shape else min(rows, header.rows)
    want = header.nbytes if not header.shape else take * header.row_bytes
    buf = bytearray(want)
    got = 0
    with memoryview(buf) as view:
        while got < want:  # in chunks: a zip member's readinto reads into a bytes object of the size asked first
            n = fh.readinto(view[got:got + READ_CHUNK])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
    if got < want:
        raise DataError(f"{where} is truncated: expected {want} bytes of data, found {got}; write it again")
    shape = (take, *header.shape[1:]) if header.shape else ()
    arr = np.frombuffer(buf, dtype=header.dtype).reshape(shape, order="F" if header.fortran else "C")
    if header.fortran and rows is not None and header.shape:
        arr = np.ascontiguousarray(arr[:rows])
    return arr


def _regular(path: Path, what: str) -> int:
    """The size of ``path``, which must be a regular file (a FIFO would hang the read, a device never ends)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"cannot read {what} {safe(path)}: {safe(exc.strerror or exc)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{safe(path)} is not a regular file (a device, FIFO or socket); give {what} file")
    return st.st_size


class NpzFile:
    """An open .npz: the headers of its members (every header is read at once, whatever its dtype), and
    bounded reads of them (only a member of real numbers is read: the others are refused when read, so a
    labels file may also hold, say, the strings the labels came from)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _regular(path, "an .npz")
        try:
            self._zip = zipfile.ZipFile(path)
            self._infos = {i.filename[:-4]: i for i in self._zip.infolist() if i.filename.endswith(".npy")}
        except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
            raise DataError(f"cannot read {safe(path)} as an .npz archive: {safe(str(exc))[:160]}") from None
        self.headers: dict[str, ArrayHeader] = {}
        for key, info in self._infos.items():
            with self._open(info) as fh:
                self.headers[key] = read_header(fh, f"array '{safe(key)}' in {safe(path)}", real=False)

    @contextmanager
    def _open(self, info: zipfile.ZipInfo) -> Iterator[IO[bytes]]:
        try:
            with self._zip.open(info) as fh:
                yield fh
        except (OSError, zipfile.BadZipFile, ValueError, EOFError, NotImplementedError) as exc:
            raise DataError(f"cannot read {safe(self.path)} as an .npz archive: {safe(str(exc))[:160]}") from None

    def read(self, key: str, rows: int | None = None) -> np.ndarray:
        """Member ``key``, its first ``rows`` rows only."""
        info, header = self._infos[key], self.headers[key]
        where = f"array '{safe(key)}' in {safe(self.path)}"
        check_real(header.dtype, where)
        with self._open(info) as fh:
            read_header(fh, where)
            return read_rows(fh, header, info.file_size - header.header_bytes, rows, where)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzFile:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def npy_header(path: Path) -> ArrayHeader:
    """The header of an .npy file (which must be a regular file)."""
    _regular(path, "an .npy")
    try:
        with open(path, "rb") as fh:
            return read_header(fh, safe(path))
    except OSError as exc:
        raise DataError(f"cannot read {safe(path)} as an .npy array: {safe(exc.strerror or exc)}") from None


def read_npy(path: Path, rows: int | None = None) -> np.ndarray:
    """The first ``rows`` rows of an .npy file, its header checked first."""
    size = _regular(path, "an .npy")
    try:
        with open(path, "rb") as fh:
            header = read_header(fh, safe(path))
            return read_rows(fh, header, size - header.header_bytes, rows, safe(path))
    except OSError as exc:
        raise DataError(f"cannot read {safe(path)} as an .npy array: {safe(exc.strerror or exc)}") from None
