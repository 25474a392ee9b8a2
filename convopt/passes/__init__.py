"""The decomposition passes. Each module of this package defines one ``ConvPass`` subclass, which registers
itself when the module is imported; this package imports them all, so the registry is the set of modules."""
from __future__ import annotations

import importlib
import pkgutil

from convopt.errors import InputError
from convopt.passes.base import REGISTRY, ConvPass, Factors, FitContext, RankPolicy, Ranks

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

PASSES = REGISTRY  # name → pass class, in registration order


def get_pass(name: str) -> ConvPass:
    try:
        return REGISTRY[name]()
    except KeyError:
        raise InputError(f"unknown pass {name!r}; choose from {', '.join(REGISTRY)}") from None


def parse_passes(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise InputError("--passes is empty; choose from " + ", ".join(REGISTRY))
    for n in names:
        get_pass(n)
    return names


def auto_passes() -> list[str]:
    """The passes auto mode tries by default."""
    return [name for name, cls in REGISTRY.items() if cls.in_auto]


__all__ = ["PASSES", "REGISTRY", "ConvPass", "Factors", "FitContext", "RankPolicy", "Ranks", "auto_passes",
           "get_pass", "parse_passes"]
