"""Typed errors: every failure a user can cause is a ConvOptError with a message that says what to do.

The CLI turns them into exit codes at its boundary (``exit_code``) and nowhere else.
"""
from __future__ import annotations


class ConvOptError(Exception):
    """Base of every error convopt raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code: int = 2


class InputError(ConvOptError):
    """The input (file, model, data, option) is missing, unreadable or invalid. Exit code 2."""


class ModelLoadError(InputError):
    """The model file cannot be read as a valid ONNX model."""


class UnsupportedModelError(InputError):
    """The model is valid ONNX but uses something convopt cannot handle."""


class ShapeError(InputError):
    """A shape is unknown (dynamic dimension with no hint) or inconsistent."""


class DataError(InputError):
    """Evaluation or calibration data is missing, unreadable or does not fit the model."""


class OutputError(ConvOptError):
    """The output cannot be written (refused path, disk full, permission). Exit code 2."""


class RewriteError(ConvOptError):
    """A rewrite produced an invalid graph; this is a bug in convopt. Exit code 3."""

    exit_code = 3


class GateError(ConvOptError):
    """The optimized model misses the CI gate (speedup or accuracy budget). Exit code 1."""

    exit_code = 1
