"""Arrays set aside on disk while a long search does not need them: written once to a private temporary
directory, read back (a fresh array) on each access, removed with the store. What a search holds for later
(a layer's refit targets) then costs memory only while one layer uses it."""
from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np


class Spill(Mapping[str, np.ndarray]):
    """A read-only mapping key → array whose arrays live in ``.npy`` files of a private temporary directory
    (deleted when the store is garbage-collected, or at exit). ``put`` writes one; ``store[key]`` reads it."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="convopt-spill-")
        self._files: dict[str, Path] = {}

    def put(self, key: str, array: np.ndarray) -> None:
        path = Path(self._dir.name) / f"{len(self._files)}.npy"
        np.save(path, array, allow_pickle=False)
        self._files[key] = path

    def __getitem__(self, key: str) -> np.ndarray:
        return np.load(self._files[key], allow_pickle=False)

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def close(self) -> None:
        """Remove the files now (the store is empty afterwards)."""
        self._files.clear()
        self._dir.cleanup()


__all__ = ["Spill"]
