"""Registry of built-in models: name → one-line description and builder returning an onnx.ModelProto."""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx

from convopt.errors import InputError
from convopt.models.example import load_example
from convopt.models.inception import googlenet, inception_3a, inception_3a_naive
from convopt.models.mobilenet import mobilenet_v1_block
from convopt.models.resnet import resnet18, resnet50, resnet_basic_block, resnet_bottleneck_block
from convopt.models.vgg import vgg16


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    builder: Callable[..., onnx.ModelProto]

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options the builder takes, with their defaults."""
        return {p.name: p.default for p in inspect.signature(self.builder).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}


MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("inception-3a-naive", "naive Inception module, GoogLeNet 3a sizes: 1x1/3x3/5x5/pool, 192x28x28 in, "
                  "387,072 conv weights", inception_3a_naive),
        ModelInfo("inception-3a", "GoogLeNet inception (3a) with 1x1 reductions: 64 / 96->128 / 16->32 / pool->32, "
                  "163,328 conv weights", inception_3a),
        ModelInfo("googlenet", "GoogLeNet (Inception v1), 3x224x224 -> 1000 logits, random weights", googlenet),
        ModelInfo("resnet-basic-block", "ResNet basic block, two 3x3 convs at 256 channels (14x14) + BN, "
                  "1,179,648 conv weights", resnet_basic_block),
        ModelInfo("resnet-bottleneck-block", "ResNet bottleneck 256->64->64->256 (1x1, 3x3, 1x1) + BN at 56x56, "
                  "69,632 conv weights", resnet_bottleneck_block),
        ModelInfo("resnet18", "ResNet-18, 3x224x224 -> 1000 logits, BN, random weights", resnet18),
        ModelInfo("resnet50", "ResNet-50 (v1.5), 3x224x224 -> 1000 logits, BN, random weights", resnet50),
        ModelInfo("vgg16", "VGG-16 (config D), 3x224x224 -> 1000 logits, 138M params (~550 MB)", vgg16),
        ModelInfo("mobilenet-v1-block", "MobileNet v1 depthwise separable block 32->64 at 112x112 + BN",
                  mobilenet_v1_block),
        ModelInfo("example", "trained Inception-style CNN on scikit-learn digits (1x28x28 -> 10), with "
                  "bundled held-out data", load_example),
    )
}


def list_models() -> list[ModelInfo]:
    """All built-in models, in registry order."""
    return list(MODELS.values())


def build(name: str, **kw: Any) -> onnx.ModelProto:
    """Build the model ``name`` with builder options ``kw`` (e.g. seed=1, bias=False, batch=4, input_size=112)."""
    info = MODELS.get(name)
    if info is None:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    accepted = info.options
    unknown = sorted(set(kw) - set(accepted))
    if unknown and not accepted:
        raise InputError(f"model {name!r} takes no options (got {', '.join(unknown)})")
    if unknown:
        raise InputError(f"model {name!r} takes no option {', '.join(unknown)}; it takes: {', '.join(accepted)}")
    try:
        return info.builder(**kw)
    except (ValueError, TypeError) as exc:
        raise InputError(f"cannot build {name!r}: {exc}") from exc
