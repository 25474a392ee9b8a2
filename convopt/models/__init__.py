"""Built-in models: the literature's Conv architectures (GoogLeNet/Inception, ResNet, VGG, MobileNet) with
deterministic random weights, and a small trained example with its held-out data.

    >>> from convopt.models import build, list_models
    >>> model = build("inception-3a", bias=False)
"""
from __future__ import annotations

from convopt.models.count import conv_weight_params, conv_weights
from convopt.models.example import (
    example_data_path,
    example_info,
    example_model_path,
    load_example,
    load_example_data,
)
from convopt.models.registry import MODELS, ModelInfo, build, list_models

__all__ = [
    "MODELS",
    "ModelInfo",
    "build",
    "conv_weight_params",
    "conv_weights",
    "example_data_path",
    "example_info",
    "example_model_path",
    "list_models",
    "load_example",
    "load_example_data",
]
