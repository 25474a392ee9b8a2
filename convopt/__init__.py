"""convopt: rewrite the Conv layers of trained ONNX models into cheaper factorized forms, and measure with ONNX
Runtime what each rewrite did to accuracy and latency.

The Python API (the CLI calls the same functions)::

    from pathlib import Path
    import convopt

    opts = convopt.OptimizeOptions(model=Path("model.onnx"), output=Path("fast.onnx"),
                                   data=convopt.DataOptions(data=Path("calib.npz")),
                                   budget=convopt.Budget(max_accuracy_drop=2.0))
    result = convopt.optimize(opts)          # writes fast.onnx; result.report is the typed report
    print(result.report.budget.certified, result.report.final.speedup)

The names are imported on first use, so ``import convopt.passes`` (or ``convopt.datafit``) stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_API = {
    "optimize": ("convopt.api", "run"),
    "optimize_model": ("convopt.api", "optimize_model"),
    "RunResult": ("convopt.api", "RunResult"),
    "Budget": ("convopt.core.budget", "Budget"),
    "OrtSettings": ("convopt.measure.ort", "OrtSettings"),
    "DataOptions": ("convopt.options", "DataOptions"),
    "OptimizeOptions": ("convopt.options", "OptimizeOptions"),
    "RankOptions": ("convopt.options", "RankOptions"),
    "Report": ("convopt.report", "Report"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'convopt' has no attribute {name!r}")
    module, attr = _API[name]
    return getattr(importlib.import_module(module), attr)
