"""convopt: rewrite the Conv layers of trained ONNX models into cheaper factorized forms,
and measure with ONNX Runtime what each rewrite did to accuracy and latency."""
from __future__ import annotations

__version__ = "0.1.0"
