"""A model handed over by a caller that keeps no other reference to it, so that its taker may let it go as soon
as it no longer needs it: the driver releases the original once BN is folded into its own copy when nothing
is measured against it (``--no-eval``: the peak is then the folded model and the result, not three models);
an evaluator releases a step's model once its session exists (auto mode's checks: one model less held
beside the two sessions being compared)."""
from __future__ import annotations

import onnx


class Handoff:
    """A model, taken once: the handoff holds it no longer after ``take``."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._model: onnx.ModelProto | None = model

    def take(self) -> onnx.ModelProto:
        """The model, once: the handoff holds it no longer."""
        model, self._model = self._model, None
        if model is None:
            raise RuntimeError("the handed-off model was already taken")
        return model


__all__ = ["Handoff"]
