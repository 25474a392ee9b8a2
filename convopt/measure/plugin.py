"""Task metrics as plug-ins: a user's function judges each sample, convopt checks what it returns.

A metric is called as ``fn(outputs, labels, inputs)``: ``outputs`` maps each model output name to its array
(samples on axis 0, as ``convopt.measure.ort.run_model`` returns them), ``labels`` is whatever the user gave as
labels (or None; rows in sample order), ``inputs`` maps each model input name to its array. It returns one float
per sample, higher is better, so the accuracy statistics can put a confidence bound on the per-sample scores.

Samples of different shapes (ragged data, run one sample at a time): ``inputs[name]`` and ``outputs[name]`` are
then Python lists of n arrays, one per sample, each exactly as fed to the model (1, *shape_i) or as the model
returned it for that sample alone (an OCR model's [T_i, 1, C]); ``labels`` keep their rows. Which form a metric
gets depends on the data only (an .npz keyed per sample, or a folder with --resize, is ragged), never on how
the samples are sharded. Arrays are read-only in both forms.

Loaded from ``FILE.py:FUNCTION`` or ``package.module:FUNCTION`` (``load_metric``), or wrapped from a plain
callable (``TaskMetric.from_callable``). Every way a metric can fail (it cannot be loaded, raises, returns
None, a string, the wrong length, NaN or inf, a matrix) is a one-line DataError or InputError (exit 2) that
names the metric and what it returned.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from convopt.errors import DataError, InputError
from convopt.measure.samples import is_ragged, items

Arrays = dict[str, "np.ndarray | list[np.ndarray]"]  # name → (n, ...) array, or n per-sample arrays (ragged)
MetricFn = Callable[[Arrays, object, Arrays], object]
SPEC_HELP = "write --metric FILE.py:FUNCTION or --metric package.module:FUNCTION"


def _one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _exc_text(exc: BaseException) -> str:
    """'ValueError: message (at file.py:12)' with the innermost frame of the user's code."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return _one_line(f"{type(exc).__name__}: {exc}") + where


def _describe(value: object) -> str:
    """What a metric returned, in a few words: type, shape and dtype for arrays, a short repr otherwise."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items ({_one_line(repr(value), 60)})"
    return f"{type(value).__name__} {_one_line(repr(value), 60)}"


def _view(arr: np.ndarray) -> np.ndarray:
    view = np.asarray(arr).view()
    view.flags.writeable = False
    return view


def _readonly(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Read-only views, so a metric cannot change the arrays convopt goes on using; a ragged array (one per
    sample) as a list of read-only views."""
    return {name: [_view(x) for x in items(arr)] if is_ragged(arr) else _view(arr) for name, arr in arrays.items()}


def _sample_count(outputs: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]) -> int:
    for arrays in (inputs, outputs):
        for arr in arrays.values():
            if np.ndim(arr) >= 1:
                return len(arr) if is_ragged(arr) else int(np.shape(arr)[0])
    raise DataError("a task metric needs the samples on axis 0 of the inputs or outputs; got no arrays")


@dataclass(frozen=True)
class TaskMetric:
    """A per-sample task metric. ``name`` is the function's name, used in reports; ``source`` says where it
    came from (the spec, or the callable's module)."""

    name: str
    fn: MetricFn
    source: str

    @classmethod
    def from_callable(cls, fn: MetricFn, name: str | None = None) -> TaskMetric:
        """Wrap a plain callable ``fn(outputs, labels, inputs) -> scores`` (the Python API)."""
        if not callable(fn):
            raise InputError(f"a task metric must be callable as fn(outputs, labels, inputs); got {_describe(fn)}")
        target = getattr(fn, "func", fn)  # functools.partial
        label = name or getattr(target, "__name__", None) or type(fn).__name__
        module = getattr(target, "__module__", None) or "python"
        return cls(str(label), fn, f"{module}.{getattr(target, '__qualname__', label)}")

    def score(
        self, outputs: Mapping[str, np.ndarray], labels: object | None, inputs: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """Call the metric and check its answer: float64 scores of shape (n,), n = samples on axis 0."""
        n = _sample_count(outputs, inputs)
        try:
            raw = self.fn(_readonly(outputs), labels, _readonly(inputs))
        except Exception as exc:  # noqa: BLE001 -- the user's code may raise anything; report it in one line
            raise DataError(
                f"task metric '{self.name}' ({self.source}) raised {_exc_text(exc)}; fix the metric"
            ) from None
        return self._check(raw, n)

    def _check(self, raw: object, n: int) -> np.ndarray:
        what = f"task metric '{self.name}' returned {_describe(raw)}"
        want = f"return one float per sample, shape ({n},)"
        try:
            arr = np.asarray(raw)
        except (ValueError, TypeError):
            raise DataError(f"{what}, which is not an array of numbers; {want}") from None
        if raw is None or arr.dtype.kind not in "biuf":
            raise DataError(f"{what}, not numbers; {want}")
        if arr.ndim != 1:
            raise DataError(f"{what}, not a 1-D array; {want}")
        if arr.shape[0] != n:
            raise DataError(f"task metric '{self.name}' returned {arr.shape[0]} scores for {n} samples; {want}")
        scores = arr.astype(np.float64)
        bad = ~np.isfinite(scores)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"task metric '{self.name}' returned {int(bad.sum())} non-finite score(s) of {n} (sample {first}: "
                f"{scores[first]}); return finite floats"
            )
        return scores


# ---------------------------------------------------------------------------------------------------------
# Loading


def _split_spec(spec: str) -> tuple[str, str]:
    where, sep, func = spec.strip().rpartition(":")
    if not sep or not where or not func.isidentifier():
        raise InputError(f"cannot read metric {spec!r}; {SPEC_HELP}")
    return where, func


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise InputError(f"metric file not found: {path}; {SPEC_HELP}")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"convopt_metric_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot load metric file {path} as Python; give a .py file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # the metric may import modules beside it
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 -- the user's module may raise anything at import
        sys.modules.pop(name, None)
        raise InputError(f"cannot load metric file {path}: {_exc_text(exc)}; fix the file") from None
    finally:
        if sys.path and sys.path[0] == folder:
            sys.path.pop(0)
    return module


def _load_module(dotted: str) -> ModuleType:
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as exc:
        if exc.name and dotted.startswith(exc.name):
            raise InputError(f"metric module {dotted!r} not found; install it or {SPEC_HELP}") from None
        raise InputError(f"cannot import metric module {dotted!r}: {_exc_text(exc)}") from None
    except Exception as exc:  # noqa: BLE001 -- the user's module may raise anything at import
        raise InputError(f"cannot import metric module {dotted!r}: {_exc_text(exc)}") from None


def load_metric(spec: str) -> TaskMetric:
    """The metric named by ``FILE.py:FUNCTION`` (a path, relative to the working directory) or
    ``package.module:FUNCTION`` (importable)."""
    where, func = _split_spec(spec)
    module = _load_file(Path(where)) if _is_file_spec(where) else _load_module(where)
    if not hasattr(module, func):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                         and getattr(v, "__module__", None) == module.__name__)
        raise InputError(
            f"{where} has no function {func!r}; it defines: {', '.join(defined) or '(no functions)'}"
        )
    fn = getattr(module, func)
    if not callable(fn):
        raise InputError(f"{where}:{func} is {_describe(fn)}, not a function; {SPEC_HELP}")
    return TaskMetric(func, fn, spec.strip())
