"""The three roles data play, never mixed: *fit* (least squares), *select* (every keep-or-roll-back decision)
and *report* (measured once, after every decision). A figure that helped decide is not an honest estimate, so
the report never decides and the decisions never see the report data."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from convopt.measure.data import EvalData
from convopt.measure.mapped import evict


@dataclass(frozen=True)
class DataRoles:
    """Disjoint samples per role (``fit`` None when the strategy fits nothing); ``how`` says how they were made."""

    fit: EvalData | None
    select: EvalData
    report: EvalData
    how: str

    def to_dict(self) -> dict[str, Any]:
        def one(d: EvalData | None) -> dict[str, Any] | None:
            return None if d is None else {"source": d.source, "samples": d.n}
        return {"fit": one(self.fit), "select": one(self.select), "report": one(self.report), "how": self.how}


Keep = Callable[[EvalData], EvalData]


def as_is(data: EvalData) -> EvalData:
    """The ``keep`` that keeps data as they are (in memory)."""
    return data


def _parts(data: EvalData, sizes: list[int], names: list[str], seed: int, keep: Keep) -> list[EvalData]:
    """The parts of a seeded permutation, each passed to ``keep`` as soon as it is made (then the pages of
    mapped ``data`` it read are dropped): one part's copy at a time."""
    perm = np.random.default_rng(seed).permutation(data.n)
    out, start = [], 0
    for size, name in zip(sizes, names):
        idx = np.sort(perm[start:start + size])
        out.append(keep(data.subset(idx, f"{name}: {size} samples, seed {seed}")))
        evict(data)
        start += size
    return out


def fit_size(n: int, refit_samples: int) -> int:
    """Samples set aside to fit: a quarter of the decision data at most, ``refit_samples`` at most."""
    return max(1, min(refit_samples, n // 4))


def split_data(data: EvalData, fit: int, seed: int, keep: Keep = as_is) -> DataRoles:
    """One data set split by a seeded permutation: ``fit`` samples to fit, the rest halved into select and
    report (select gets the odd one); ``keep`` takes each part as it is made (e.g. measure.mapped.on_disk)."""
    if data.n < 2 + fit:
        raise ValueError(f"need at least {2 + fit} samples to split into fit, select and report data")
    rest = data.n - fit
    sel, rep = rest - rest // 2, rest // 2
    if fit:
        f, s, r = _parts(data, [fit, sel, rep], ["fit", "select", "report"], seed, keep)
    else:
        f, (s, r) = None, _parts(data, [sel, rep], ["select", "report"], seed, keep)
    how = (f"--data split by a seeded permutation (seed {seed}): "
           + (f"{fit} to fit, " if fit else "") + f"{sel} to select, {rep} to report")
    return DataRoles(f, s, r, how)


def split_calib(calib: EvalData, report: EvalData, fit: int, seed: int, keep: Keep = as_is) -> DataRoles:
    """--calib to fit and select (a seeded split), --data to report only; ``keep`` as in split_data."""
    if fit and calib.n < fit + 1:
        raise ValueError(f"need at least {fit + 1} calibration samples to fit on {fit} and select on the rest")
    if fit:
        f, s = _parts(calib, [fit, calib.n - fit], ["fit", "select"], seed, keep)
    else:
        f, s = None, calib
    how = (f"--calib split by a seeded permutation (seed {seed}): " + (f"{fit} to fit, " if fit else "")
           + f"{s.n} to select; --data ({report.n}) to report")
    return DataRoles(f, s, report, how)
