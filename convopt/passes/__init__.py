"""The decomposition passes, one per module, and the registry the pipeline and CLI use."""
from __future__ import annotations

from convopt.errors import InputError
from convopt.passes.base import ConvPass, RankPolicy, run_conv_pass
from convopt.passes.bottleneck import Bottleneck
from convopt.passes.depthwise import Depthwise
from convopt.passes.factorize import Factorize
from convopt.passes.split5x5 import Split5x5

PASSES: dict[str, type[ConvPass]] = {p.name: p for p in (Bottleneck, Split5x5, Factorize, Depthwise)}


def get_pass(name: str) -> ConvPass:
    try:
        return PASSES[name]()
    except KeyError:
        raise InputError(f"unknown pass {name!r}; choose from {', '.join(PASSES)}") from None


def parse_passes(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise InputError("--passes is empty; choose from " + ", ".join(PASSES))
    for n in names:
        get_pass(n)
    return names


__all__ = ["PASSES", "ConvPass", "RankPolicy", "get_pass", "parse_passes", "run_conv_pass"]
