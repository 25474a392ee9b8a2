"""The precision the written model is deployed in. Every step is judged, timed and written in it: with INT8,
each step's FP32 model is quantized (ONNX Runtime static quantization, QDQ, per-channel weights, calibrated on
the fit data) before any instrument sees it, and auto mode times its per-layer candidates quantized too (the
best factorization at INT8 need not be the best at FP32)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from convopt.measure.data import EvalData


@dataclass(frozen=True)
class Deployment:
    """``name``: "fp32" (the models as rewritten) or "int8" (quantized, calibrated on ``calib``)."""

    name: str = "fp32"
    calib: EvalData | None = None

    @property
    def quantized(self) -> bool:
        return self.name == "int8"

    def model(self, fp32: onnx.ModelProto) -> onnx.ModelProto:
        """The model as deployed."""
        if not self.quantized:
            return fp32
        from convopt.quantize import quantize_int8

        assert self.calib is not None
        return quantize_int8(fp32, self.calib).model

    def layer(self, single: onnx.ModelProto, in_shape: tuple[int, ...], seed: int = 0) -> onnx.ModelProto:
        """A single-layer model (input ``x``) as deployed, for timing (calibrated on a few random inputs: the
        run time does not depend on the scales)."""
        if not self.quantized:
            return single
        from convopt.quantize import quantize_int8

        x = np.random.default_rng(seed).standard_normal((4 * in_shape[0], *in_shape[1:])).astype(np.float32)
        return quantize_int8(single, EvalData({"x": x}, None, "random layer inputs")).model


FP32 = Deployment()
