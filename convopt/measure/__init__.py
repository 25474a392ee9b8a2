"""Measurement around passes: evaluation data (data), ORT sessions (ort), output metrics (metrics, pure
numpy), interleaved latency (latency), and the Evaluator that ties them together (evaluator).

Nothing is imported here, so ``convopt.measure.metrics`` can be used without loading onnxruntime.
"""
