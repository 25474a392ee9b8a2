"""Tensor dimensions and graph-input shapes: the one dimension parser and the one input-shape resolver.

A declared dimension (of a ValueInfoProto) is read by :func:`declared_dims` into a :data:`Dim`: an ``int``
(``dim_value`` >= 0), a ``str`` (``dim_param``, a symbolic name) or ``None`` (unset, or a negative
``dim_value``, which some exporters write for "dynamic"). Every place that reads a dimension uses it.

Graph-input shapes follow one rule set (:func:`resolve_inputs`): an ``--input-shape`` hint gives the whole
shape of one input and must have its declared rank and agree with its fixed dims; without a hint a dynamic
leading (batch) dim becomes 1, and any other dynamic dim leaves the shape unknown, with the reason and the
``--input-shape`` to pass. Two views of it:

- lenient, :func:`graph_input_shapes`: an unknown shape is ``None`` (MAC counts, inspect);
- strict, :func:`resolve_input_shapes`: an unknown shape raises ShapeError (evaluation data needs every shape).

Bad hints raise ShapeError in both.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import onnx
from onnx import helper

from convopt.errors import InputError, ShapeError

Dim = Union[int, str, None]  # fixed size | symbolic name | unknown


def declared_dims(vi: onnx.ValueInfoProto) -> tuple[Dim, ...] | None:
    """The declared dims of a tensor value: int when fixed, the dim_param name when symbolic, None when unset
    (or negative). None when ``vi`` is not a tensor or declares no shape at all (not even its rank)."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    return tuple(_dim(d) for d in vi.type.tensor_type.shape.dim)


def _dim(d: onnx.TensorShapeProto.Dimension) -> Dim:
    if d.HasField("dim_value"):
        return int(d.dim_value) if d.dim_value >= 0 else None
    if d.HasField("dim_param") and d.dim_param:
        return str(d.dim_param)
    return None


def known_sizes(dims: Sequence[Dim]) -> tuple[int | None, ...]:
    """``dims`` with symbolic names as None: the sizes that are known."""
    return tuple(d if isinstance(d, int) else None for d in dims)


def static_shape(dims: Sequence[Dim] | None) -> tuple[int, ...] | None:
    """``dims`` as a concrete shape when every dim is fixed, else None."""
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return tuple(int(d) for d in dims)  # type: ignore[arg-type]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs: graph inputs that are not initializers (old opsets list weights as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def input_dtype(vi: onnx.ValueInfoProto) -> np.dtype:
    """numpy dtype of a tensor-typed graph input."""
    if not vi.type.HasField("tensor_type"):
        raise InputError(f"input '{vi.name}' is not a tensor; convopt can only feed tensor inputs")
    return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))


# ---------------------------------------------------------------- formatting and suggestions


def _example_shape(dims: Sequence[Dim]) -> tuple[int, ...]:
    """A plausible concrete shape for a message: batch 1, known dims kept, image-like guesses otherwise."""
    out = []
    rank = len(dims)
    nhwc = rank == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3)
    for i, d in enumerate(dims):
        if isinstance(d, int):
            out.append(d)
        elif i == 0:
            out.append(1)
        elif rank == 4 and i == (3 if nhwc else 1):
            out.append(3)
        elif rank == 4:
            out.append(224)
        else:
            out.append(1)
    return tuple(out)


def _fmt_dims(dims: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape)


def input_shape_option(name: str, dims: Sequence[Dim] | None) -> str:
    """The ``--input-shape`` to suggest for an input with declared ``dims`` (None: rank unknown, 4-D guessed)."""
    example = _example_shape(dims) if dims is not None else (1, 3, 224, 224)
    return f"--input-shape {name}:{_fmt_shape(example)}"


@dataclass(frozen=True)
class DynamicDim:
    """One dimension of a real graph input that is not fixed. ``axis`` None: the input declares no shape at all
    (not even its rank); ``symbol``: its dim_param name, None when unnamed. ``suggestion``: the
    ``--input-shape`` option that fixes the whole input."""

    input: str
    axis: int | None
    symbol: str | None
    suggestion: str

    @property
    def is_batch(self) -> bool:
        """The leading dim: convopt assumes 1 for it without a hint."""
        return self.axis == 0


def dynamic_dims(model: onnx.ModelProto) -> list[DynamicDim]:
    """Every dimension of the model's real inputs that is not fixed, in input and axis order."""
    out: list[DynamicDim] = []
    for vi in graph_inputs(model):
        dims = declared_dims(vi)
        hint = input_shape_option(vi.name, dims)
        if dims is None:
            out.append(DynamicDim(vi.name, None, None, hint))
            continue
        out.extend(DynamicDim(vi.name, ax, d if isinstance(d, str) else None, hint)
                   for ax, d in enumerate(dims) if not isinstance(d, int))
    return out


# ---------------------------------------------------------------- resolving input shapes


@dataclass(frozen=True)
class InputShape:
    """A real graph input: its declared dims, its concrete shape (None: unknown) and, when unknown, why
    (the ShapeError message strict callers raise, naming the ``--input-shape`` to pass)."""

    name: str
    declared: tuple[Dim, ...] | None
    shape: tuple[int, ...] | None
    problem: str | None = None


def resolve_inputs(model: onnx.ModelProto, hints: Mapping[str, Sequence[int]] | None = None) -> list[InputShape]:
    """Every real graph input (not an initializer), in graph order, resolved by the one rule set (module
    docstring). Raises ShapeError for a hint naming no input, of the wrong rank, not positive, or contradicting
    a fixed dim. The leading dim only describes one run: evaluation batches follow OrtSettings.batch_size."""
    hints = dict(hints or {})
    inputs = graph_inputs(model)
    names = [vi.name for vi in inputs]
    unknown = sorted(set(hints) - set(names))
    if unknown:
        raise ShapeError(
            f"--input-shape given for {', '.join(repr(u) for u in unknown)}, which is not a model input; "
            f"the model's inputs are: {', '.join(repr(n) for n in names) or '(none)'}"
        )
    out = []
    for vi in inputs:
        dims = declared_dims(vi)
        if vi.name in hints:
            out.append(InputShape(vi.name, dims, _checked_hint(vi.name, dims, hints[vi.name])))
        else:
            out.append(_without_hint(vi.name, dims))
    return out


def _checked_hint(name: str, dims: tuple[Dim, ...] | None, hint_in: Sequence[int]) -> tuple[int, ...]:
    hint = tuple(int(h) for h in hint_in)
    if dims is None:
        dims = (None,) * len(hint)
    example = _fmt_shape(_example_shape(dims))
    if len(hint) != len(dims) or any(h <= 0 for h in hint):
        raise ShapeError(
            f"--input-shape {name}:{_fmt_shape(hint)} does not fit input '{name}' of shape {_fmt_dims(dims)} "
            f"(rank {len(dims)}); pass e.g. --input-shape {name}:{example}"
        )
    clash = [i for i, (d, h) in enumerate(zip(dims, hint)) if isinstance(d, int) and d != h]
    if clash:
        raise ShapeError(
            f"--input-shape {name}:{_fmt_shape(hint)} contradicts the fixed dims of input '{name}' "
            f"(shape {_fmt_dims(dims)}, axis {clash[0]}); pass e.g. --input-shape {name}:{example}"
        )
    return hint


def _without_hint(name: str, dims: tuple[Dim, ...] | None) -> InputShape:
    if dims is None:
        return InputShape(name, None, None, (
            f"input '{name}' has no declared shape (not even its rank); pass --input-shape "
            f"{name}:1x3x224x224 with the shape the model expects"))
    if any(not isinstance(d, int) for d in dims[1:]):
        return InputShape(name, dims, None, (
            f"input '{name}' has a dynamic dimension (shape {_fmt_dims(dims)}); pass "
            f"{input_shape_option(name, dims)}"))
    return InputShape(name, dims, tuple(d if isinstance(d, int) else 1 for d in dims))


def graph_input_shapes(
    model: onnx.ModelProto, hints: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...] | None]:
    """Lenient: the concrete shape of every real graph input, None where it stays unknown."""
    return {r.name: r.shape for r in resolve_inputs(model, hints)}


def resolve_input_shapes(
    model: onnx.ModelProto, hints: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Strict: the concrete shape of every real graph input, in graph order; ShapeError (naming the input and
    the ``--input-shape`` to pass) for the first one that stays unknown."""
    out: dict[str, tuple[int, ...]] = {}
    for r in resolve_inputs(model, hints):
        if r.shape is None:
            raise ShapeError(r.problem or f"the shape of input '{r.name}' is unknown")
        out[r.name] = r.shape
    return out


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse ``NAME:1x3x224x224`` into ("NAME", (1, 3, 224, 224)). The name may itself contain ':'."""
    name, sep, dims = text.rpartition(":")
    try:
        if not sep or not name:
            raise ValueError("missing NAME:")
        shape = tuple(int(p) for p in dims.lower().split("x"))
        if not shape or any(d <= 0 for d in shape):
            raise ValueError("dims must be positive integers")
    except ValueError:
        raise InputError(
            f"cannot read --input-shape {text!r}: write NAME:DIMS with positive integer dims separated by 'x', "
            "e.g. data_0:1x3x224x224"
        ) from None
    return name, shape
