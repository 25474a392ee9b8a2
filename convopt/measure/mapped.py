"""Evaluation data kept in a file and mapped, its pages dropped from this process between uses.

Auto mode reads its fit data again and again (the layers' moments, the refit targets, the sensitivities, each
step's refits), but between those reads it times, solves and checks for minutes. Mapped read-only from an
anonymous temporary file (convopt.pages), the data cost memory only while a read touches them: :func:`evict`
drops their pages from the process. ddddocr-det's 16 calibration and 8 report samples at 416×416 are
50 MiB. Only where the temporary folder is on a disk: on a tmpfs (or ramfs) the file itself would be memory,
so the data stay in memory as they are (set TMPDIR to a folder on a disk to have them mapped).
"""
from __future__ import annotations

from dataclasses import replace

from convopt.measure.data import EvalData
from convopt.pages import drop_pages, tmp_on_disk, to_file


def on_disk(data: EvalData) -> EvalData:
    """``data`` with its input arrays moved to an anonymous temporary file and mapped read-only (convopt.pages:
    the same values; writing to them raises). Ragged data (per-sample arrays) are returned as they are."""
    if data.ragged or not tmp_on_disk():
        return data
    names = list(data.inputs)
    return replace(data, inputs=dict(zip(names, to_file([data.inputs[n] for n in names], "convopt-data-"))))


def evict(data: EvalData) -> None:
    """Drop the pages of ``data``'s mapped inputs from this process (a later read maps them again from the
    file). A no-op for inputs held in memory."""
    drop_pages(data.inputs.values())


__all__ = ["evict", "on_disk"]
