"""The three roles data play, never mixed: *fit* (least squares), *select* (every keep-or-roll-back decision)
and *report* (measured once, after every decision). A figure that helped decide is not an honest estimate, so
the report never decides and the decisions never see the report data."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from convopt.measure.data import EvalData


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


def _parts(data: EvalData, sizes: list[int], names: list[str], seed: int) -> list[EvalData]:
    perm = np.random.default_rng(seed).permutation(data.n)
    out, start = [], 0
    for size, name in zip(sizes, names):
        idx = np.sort(perm[start:start + size])
        out.append(data.subset(idx, f"{name}: {size} samples, seed {seed}"))
        start += size
    return out


def fit_size(n: int, refit_samples: int) -> int:
    """Samples set aside to fit: a quarter of the decision data at most, ``refit_samples`` at most."""
    return max(1, min(refit_samples, n // 4))


def split_data(data: EvalData, fit: int, seed: int) -> DataRoles:
    """One data set split by a seeded permutation: ``fit`` samples to fit, the rest halved into select and
    report (select gets the odd one)."""
    if data.n < 2 + fit:
        raise ValueError(f"need at least {2 + fit} samples to split into fit, select and report data")
    rest = data.n - fit
    sel, rep = rest - rest // 2, rest // 2
    if fit:
        f, s, r = _parts(data, [fit, sel, rep], ["fit", "select", "report"], seed)
    else:
        f, (s, r) = None, _parts(data, [sel, rep], ["select", "report"], seed)
    how = (f"--data split by a seeded permutation (seed {seed}): "
           + (f"{fit} to fit, " if fit else "") + f"{sel} to select, {rep} to report")
    return DataRoles(f, s, r, how)


def split_calib(calib: EvalData, report: EvalData, fit: int, seed: int) -> DataRoles:
    """--calib to fit and select (a seeded split), --data to report only."""
    if fit and calib.n < fit + 1:
        raise ValueError(f"need at least {fit + 1} calibration samples to fit on {fit} and select on the rest")
    if fit:
        f, s = _parts(calib, [fit, calib.n - fit], ["fit", "select"], seed)
    else:
        f, s = None, calib
    how = (f"--calib split by a seeded permutation (seed {seed}): " + (f"{fit} to fit, " if fit else "")
           + f"{s.n} to select; --data ({report.n}) to report")
    return DataRoles(f, s, report, how)
