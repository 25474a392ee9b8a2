"""The per-layer latency cache: median ms of single-layer models by shape key and settings key, optionally
persisted as JSON between runs.

File format (written sorted, so the marker comes first)::

    {"convopt_latency_cache": 1, "entries": {"conv:1,3,...|dense|CPU...": 0.123, ...}}

A file from before the marker (a flat object of "conv:..." keys) is still read. Keys start "conv:" or "gemm:"
(a layer timed alone) or "ctx:" (a candidate priced in context, convopt.auto.context: its saving, noise and
graph deltas may be negative). Anything else, a value that is not a finite number (≥ 0 but under "ctx:"),
a file that is not a regular file or is over CACHE_MAX_BYTES, is refused with InputError (exit 2) before the
run starts, unless ``replace_invalid`` (the CLI's ``--overwrite``): then the run starts with an empty cache
and replaces the file. Saving goes through convopt.writes (temporary file, rename, removed on a signal).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from convopt.errors import InputError
from convopt.limits import CACHE_MAX_BYTES
from convopt.text import safe

MARKER = "convopt_latency_cache"
FORMAT_VERSION = 1
KEY_PREFIXES = ("conv:", "gemm:", "ctx:")  # a Conv, a Gemm read as a 1x1 conv, a candidate priced in context


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_cache(raw: bytes | bytearray, source: str) -> dict[str, float]:
    """The entries of a cache file's bytes, or InputError naming what is wrong."""
    def bad(why: str) -> InputError:
        return InputError(f"--latency-cache {source} is not a convopt latency cache ({why}); choose another path, "
                          "or pass --overwrite to start a new cache there")

    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad(f"not JSON: {safe(str(exc)[:80])}") from None
    if not isinstance(data, dict):
        raise bad(f"a JSON {type(data).__name__}, not an object")
    if MARKER in data:
        if data.get(MARKER) != FORMAT_VERSION or not isinstance(data.get("entries"), dict):
            raise bad(f'format {safe(repr(data.get(MARKER))[:20])}; this convopt reads format {FORMAT_VERSION}')
        data = data["entries"]
    out: dict[str, float] = {}
    for k, v in data.items():
        if not k.startswith(KEY_PREFIXES):
            raise bad(f"key {safe(k[:60])!s} is not a layer key")
        signed = k.startswith("ctx:")  # in-context prices: savings and graph deltas may be negative
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (v < 0 and not signed):
            raise bad(f"the value of {safe(k[:60])} is {safe(json.dumps(v)[:20])}, not a time in ms")
        out[k] = float(v)
    return out


@dataclass
class LayerLatencyCache:
    """Median ms of single-layer models, keyed by shape key and settings key; optional JSON persistence."""

    path: Path | None = None
    hits: int = 0
    misses: int = 0
    replace_invalid: bool = False

    def __post_init__(self) -> None:
        from convopt.io import read_regular_file

        self._data: dict[str, float] = {}
        if self.path is None or not Path(self.path).exists():
            return
        try:
            raw = read_regular_file(self.path, CACHE_MAX_BYTES, "a latency cache")
            self._data = parse_cache(raw, safe(self.path))
        except InputError:
            if not self.replace_invalid:
                raise
            self._data = {}

    def get(self, key: str) -> float | None:
        v = self._data.get(key)
        if v is None:
            self.misses += 1
        else:
            self.hits += 1
        return v

    def put(self, key: str, ms: float) -> None:
        self._data[key] = float(ms)

    def __len__(self) -> int:
        return len(self._data)

    def save(self) -> None:
        """Write the cache (atomically; its folder is created when missing)."""
        if self.path is None:
            return
        from convopt.writes import atomic_write_bytes

        p = Path(self.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({MARKER: FORMAT_VERSION, "entries": self._data}, indent=0, sort_keys=True)
        atomic_write_bytes(p, (text + "\n").encode("utf-8"))
