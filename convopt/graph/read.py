"""Reading Convs: what a pass sees of a Conv (ConvSpec), what no pass may touch (ConvSkip), and the one Conv
validity check, :func:`conv_issue`, behind both skip reasons and load refusals.

A ConvSpec is y = conv(x, W, B; strides, explicit pads, dilations, group), with W (O, I/g, kh, kw) as float32
numpy. :func:`conv_issue` answers a ConvIssue (reason, fatal) or None; :func:`read_convs` turns any issue into a
ConvSkip, and ``model_problem`` (convopt.graph.validate, at load time) refuses the model on a fatal one.

Fatal: the Conv cannot run in any runtime, so the model is refused (exit 2), with or without evaluation:

- no weight input; a constant weight with fewer than 3 dims or a zero-sized dim, or disagreeing with
  kernel_shape; group < 1 or not dividing the output channels; a bias shape other than (O,);
- kernel_shape, strides, dilations or pads of the wrong length, or below their minimum (strides and
  dilations 1, pads 0); auto_pad other than NOTSET, SAME_UPPER, SAME_LOWER and VALID;
- an input of the wrong rank, with other than I/g × group channels, or with a zero-sized dim; an empty output
  (kernel larger than the padded input);
- sizes beyond 64-bit arithmetic: a padded input length or dilated kernel extent of 2^63 or more, or an output
  that holds 2^63 bytes or more even for the smallest input its declared shape allows (batch 1, unknown
  sizes 1). ONNX Runtime fails on these with an integer overflow (pads = 2^40 on any input).

Skip: a valid Conv convopt leaves as it is:

- weight or bias computed at run time, or not readable; a weight that is not float32; not 2-D (1-D, 3-D conv);
- a pad, stride or dilation above 2^31 - 1. ONNX Runtime's CPU kernels run such a Conv (pads 2^40 with
  strides 2^41 give a 2-pixel output), but runtimes that take conv parameters as 32-bit ints (cuDNN) cannot,
  and a rewrite would spread the value over more Convs.

Quantized convs and ConvTranspose are not Convs here: read_convs reports them as skips by their op type.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from convopt.graph.constants import ConstantTable
from convopt.graph.pads import AUTO_PADS, conv_out_size, resolve_pads
from convopt.graph.shapes import Dim, known_sizes, static_shape

FLOAT_TYPES = {onnx.TensorProto.FLOAT}
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class ConvSpec:
    """A 2-D Conv node with constant weights, read out of the graph. The weight is read from the model when
    ``W`` is used (each use a fresh float32 array), so a list of ConvSpecs holds no copy of the weights."""

    index: int
    node: onnx.NodeProto
    name: str
    x: str
    y: str
    w_shape: tuple[int, int, int, int]  # (O, I/g, kh, kw)
    finite: bool  # no NaN or Inf in the weight
    B: np.ndarray | None  # (O,)
    w_name: str
    b_name: str | None
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    group: int
    pads: tuple[int, int, int, int] | None  # (top, left, bottom, right), resolved from auto_pad when possible
    auto_pad: str
    in_shape: tuple[int, int, int, int] | None  # (N, C, H, W) of x, batch 1 when dynamic
    out_shape: tuple[int, int, int, int] | None
    pads_reason: str | None = None  # why pads could not be resolved
    weight: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)
    op: str = "Conv"  # "Gemm": a fully connected layer seen as a 1×1 conv (see convopt.graph.linear)
    x_shape: tuple[int, ...] | None = None  # Gemm: the input's real shape (rows, I), batch 1

    @property
    def W(self) -> np.ndarray:
        """The weight (O, I/g, kh, kw), float32, read from the model now."""
        assert self.weight is not None
        return np.ascontiguousarray(self.weight(), dtype=np.float32)

    @property
    def out_channels(self) -> int:
        return int(self.w_shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.w_shape[1] * self.group)

    @property
    def out_hw(self) -> tuple[int, int] | None:
        return None if self.out_shape is None else (self.out_shape[2], self.out_shape[3])

    @property
    def macs(self) -> int | None:
        """Multiply-accumulates for one sample (batch 1); None when the output size is unknown."""
        if self.out_shape is None:
            return None
        return conv_macs(self.w_shape, self.out_shape[2], self.out_shape[3])

    @property
    def params(self) -> int:
        return int(np.prod(self.w_shape) + (0 if self.B is None else self.B.size))


@dataclass(frozen=True)
class ConvSkip:
    """A Conv-like node that no pass can rewrite, and why."""

    index: int
    node: onnx.NodeProto
    name: str
    reason: str


@dataclass(frozen=True)
class ConvIssue:
    """Why a Conv is not rewritten; ``fatal``: the model cannot run anywhere (load refuses it)."""

    reason: str
    fatal: bool


def conv_macs(w_shape: Iterable[int], out_h: int, out_w: int) -> int:
    o, i_per_g, kh, kw = (int(v) for v in w_shape)
    return o * i_per_g * kh * kw * int(out_h) * int(out_w)


def node_display_name(node: onnx.NodeProto) -> str:
    """The node's name, or (exporters often leave it empty) its first output's name."""
    return node.name or (node.output[0] if node.output else node.op_type)


def attrs(node: onnx.NodeProto) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


# ---------------------------------------------------------------- the one validity check


@dataclass(frozen=True)
class ConvAttrs:
    """A Conv node's attributes as written (None: absent), before any check."""

    kernel_shape: tuple[int, ...] | None
    strides: tuple[int, ...] | None
    dilations: tuple[int, ...] | None
    pads: tuple[int, ...] | None
    auto_pad: str
    group: int

    @classmethod
    def of(cls, node: onnx.NodeProto) -> "ConvAttrs":
        a = attrs(node)

        def ints(key: str) -> tuple[int, ...] | None:
            return tuple(int(v) for v in a[key]) if key in a else None  # type: ignore[attr-defined]

        return cls(ints("kernel_shape"), ints("strides"), ints("dilations"), ints("pads"),
                   str(a.get("auto_pad", "NOTSET")), int(a.get("group", 1)))  # type: ignore[call-overload]


def conv_issue(
    node: onnx.NodeProto, consts: ConstantTable, shapes: Mapping[str, Sequence[Dim]], ir_version: int = 8
) -> ConvIssue | None:
    """Why the Conv ``node`` (default domain) is not rewritten, fatal first (module docstring); None: it is a
    readable 2-D float32 Conv with constant weights. ``shapes``: known dims of tensors (None/str: unknown)."""
    if len(node.input) < 2 or not node.input[1]:
        return ConvIssue("Conv has no weight input", True)
    a = ConvAttrs.of(node)
    reason = _fatal_reason(node, a, consts, shapes)
    if reason is not None:
        return ConvIssue(reason, True)
    reason = _skip_reason(node, a, consts, ir_version)
    return None if reason is None else ConvIssue(reason, False)


def _fatal_reason(
    node: onnx.NodeProto, a: ConvAttrs, consts: ConstantTable, shapes: Mapping[str, Sequence[Dim]]
) -> str | None:
    w = consts.shape(node.input[1])  # None: computed at run time
    x = known_sizes(shapes[node.input[0]]) if node.input[0] in shapes else None
    nsp = len(w) - 2 if w is not None else (len(x) - 2 if x is not None and len(x) >= 3 else None)
    return (_weight_reason(a, w) or _attr_reason(a, nsp) or _bias_reason(node, consts, w)
            or _input_reason(node.input[0], a, w, x, _itemsize(consts.dtype(node.input[1]))))


def _weight_reason(a: ConvAttrs, w: tuple[int, ...] | None) -> str | None:
    if w is None:
        return None
    if len(w) < 3:
        return f"weight shape {list(w)} has fewer than 3 dims"
    if 0 in w:
        return f"weight has a zero-sized dimension {list(w)}"
    if a.kernel_shape is not None and a.kernel_shape != w[2:]:
        return f"kernel_shape {list(a.kernel_shape)} disagrees with weight shape {list(w)}"
    if a.group >= 1 and w[0] % a.group != 0:
        return f"group {a.group} does not divide the {w[0]} output channels of weight {list(w)}"
    return None


def _attr_reason(a: ConvAttrs, nsp: int | None) -> str | None:
    if a.auto_pad not in AUTO_PADS and a.auto_pad != "":
        return f"unknown auto_pad {a.auto_pad!r} (ONNX allows {', '.join(AUTO_PADS)})"
    if a.group < 1:
        return f"group {a.group} must be >= 1"
    checks = (("kernel_shape", a.kernel_shape, nsp, 1), ("strides", a.strides, nsp, 1),
              ("dilations", a.dilations, nsp, 1), ("pads", a.pads, None if nsp is None else 2 * nsp, 0))
    for key, vals, length, low in checks:
        if vals is None:
            continue
        if length is not None and len(vals) != length:
            return f"{key} {list(vals)} should have {length} values for a {nsp}-D kernel"
        if any(v < low for v in vals):
            return f"{key} {list(vals)} must be >= {low}"
    return None


def _bias_reason(node: onnx.NodeProto, consts: ConstantTable, w: tuple[int, ...] | None) -> str | None:
    if w is None or len(node.input) < 3 or not node.input[2]:
        return None
    b = consts.shape(node.input[2])
    if b is not None and b != (w[0],):
        return f"bias shape {list(b)} does not match the {w[0]} output channels"
    return None


def _input_reason(
    x_name: str, a: ConvAttrs, w: tuple[int, ...] | None, x: tuple[int | None, ...] | None, itemsize: int
) -> str | None:
    if w is None or x is None:
        return None  # weight computed at run time, or input rank unknown: nothing to compare
    if len(x) != len(w):
        return f"input '{x_name}' has rank {len(x)} but the weight {list(w)} needs rank {len(w)}"
    if x[1] is not None and x[1] != w[1] * a.group:
        return f"input '{x_name}' has {x[1]} channels but the weight expects {w[1] * a.group} (group {a.group})"
    if 0 in x:
        return f"input '{x_name}' has a zero-sized dimension {['?' if d is None else d for d in x]}"
    return _size_reason(a, w, x, itemsize)


def _size_reason(a: ConvAttrs, w: tuple[int, ...], x: tuple[int | None, ...], itemsize: int) -> str | None:
    """Empty outputs and sizes beyond 64-bit arithmetic (unknown sizes taken at their smallest, 1)."""
    nsp = len(w) - 2
    strides, dil = a.strides or (1,) * nsp, a.dilations or (1,) * nsp
    explicit = a.auto_pad in ("", "NOTSET")
    pads = (a.pads or (0,) * 2 * nsp) if explicit else (0,) * 2 * nsp
    sizes: list[int] = []
    for i in range(nsp):
        extent, size = (w[2 + i] - 1) * dil[i] + 1, x[2 + i]
        padded = (size or 1) + pads[i] + pads[nsp + i]
        if extent > INT64_MAX or padded > INT64_MAX:
            return (f"pads {list(pads)} and dilations {list(dil)} overflow 64-bit arithmetic "
                    f"(kernel extent {extent}, padded input {padded}); no runtime can run this Conv")
        if a.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            sizes.append(-(-(size or 1) // strides[i]))
        else:
            out = conv_out_size(size or 1, w[2 + i], strides[i], dil[i], pads[i], pads[nsp + i])
            sizes.append(out if size is not None else max(out, 1))
    if any(s <= 0 for s in sizes):
        shown = "x".join(str(s) if x[2 + i] is not None else "?" for i, s in enumerate(sizes))
        return (f"output size {shown} is empty: the kernel {list(w[2:])} (dilation {list(dil)}) is larger than "
                f"the padded input {['?' if d is None else d for d in x[2:]]}")
    nbytes = (x[0] or 1) * w[0] * math.prod(sizes) * itemsize
    if nbytes > INT64_MAX:
        return (f"its output would hold about 2^{math.log2(nbytes):.0f} bytes (pads {list(pads)}, strides "
                f"{list(strides)}): beyond 64-bit sizes, no runtime can run this Conv")
    return None


def _itemsize(dtype: int | None) -> int:
    try:
        return int(np.dtype(helper.tensor_dtype_to_np_dtype(dtype)).itemsize) if dtype else 1
    except (KeyError, TypeError, ValueError):
        return 1


def _skip_reason(node: onnx.NodeProto, a: ConvAttrs, consts: ConstantTable, ir_version: int) -> str | None:
    w_name = node.input[1]
    b_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if not consts.is_constant(w_name, ir_version):
        return "weight is not constant"
    if b_name is not None and not consts.is_constant(b_name, ir_version):
        return "bias is not constant"
    dtype = consts.dtype(w_name)
    if dtype not in FLOAT_TYPES:
        return f"weight dtype {onnx.TensorProto.DataType.Name(dtype or 0)} is not float32"
    w = consts.shape(w_name)
    if w is None:
        return "weight value cannot be read"
    if b_name is not None and consts.shape(b_name) is None:
        return "bias value cannot be read"
    if len(w) != 4:
        return {3: "1-D conv", 5: "3-D conv"}.get(len(w), f"{len(w) - 2}-D conv")
    for key, vals in (("pads", a.pads), ("strides", a.strides), ("dilations", a.dilations)):
        if vals and max(vals) > INT32_MAX:
            return (f"{key} {list(vals)} exceed 2^31-1: runtimes that take conv parameters as 32-bit ints "
                    "(cuDNN) cannot run this Conv, so convopt leaves it as it is")
    return None


# ---------------------------------------------------------------- reading


def read_convs(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None
) -> list[ConvSpec | ConvSkip]:
    """Every Conv-like node of the main graph, as a ConvSpec (rewritable in principle) or a ConvSkip.
    ``shapes``: static shapes of tensors (e.g. infer_tensor_shapes), batch 1 where dynamic."""
    graph = model.graph
    consts = ConstantTable(graph)
    shapes = shapes or {}
    out: list[ConvSpec | ConvSkip] = []
    for idx, node in enumerate(graph.node):
        name = node_display_name(node)
        if node.op_type in ("ConvInteger", "QLinearConv") or (
            node.op_type == "Conv" and node.domain == "com.microsoft"
        ):
            out.append(ConvSkip(idx, node, name, "quantized conv"))
            continue
        if node.op_type == "ConvTranspose":
            out.append(ConvSkip(idx, node, name, "ConvTranspose is not rewritten"))
            continue
        if node.op_type == "Gemm" and node.domain in ("", "ai.onnx"):
            from convopt.graph.linear import read_gemm

            out.append(read_gemm(idx, node, name, consts, shapes))
            continue
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        issue = conv_issue(node, consts, shapes, model.ir_version)
        out.append(ConvSkip(idx, node, name, issue.reason) if issue else _spec(idx, node, name, consts, shapes))
    return out


def _spec(
    idx: int, node: onnx.NodeProto, name: str, consts: ConstantTable, shapes: Mapping[str, Sequence[int]]
) -> ConvSpec:
    """The ConvSpec of a Conv that conv_issue passed (constant float32 4-D weight, consistent attributes)."""
    a = ConvAttrs.of(node)
    W = consts.value(node.input[1])
    assert W is not None
    b_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    bv = consts.value(b_name) if b_name else None
    kernel = (int(W.shape[2]), int(W.shape[3]))
    strides, dilations = a.strides or (1, 1), a.dilations or (1, 1)
    in_shape = static_shape(shapes.get(node.input[0]))
    in4 = in_shape if in_shape is not None and len(in_shape) == 4 else None
    pads, reason = resolve_pads(a.auto_pad, list(a.pads) if a.pads else None, kernel, strides, dilations,  # type: ignore[arg-type]
                                None if in4 is None else (in4[2], in4[3]))
    out_shape = None
    if in4 is not None and pads is not None:
        oh = conv_out_size(in4[2], kernel[0], strides[0], dilations[0], pads[0], pads[2])
        ow = conv_out_size(in4[3], kernel[1], strides[1], dilations[1], pads[1], pads[3])
        out_shape = (in4[0], int(W.shape[0]), oh, ow)
    else:
        y = static_shape(shapes.get(node.output[0]))
        out_shape = y if y is not None and len(y) == 4 else None
    w_name = node.input[1]
    return ConvSpec(
        index=idx, node=node, name=name, x=node.input[0], y=node.output[0],
        w_shape=tuple(int(d) for d in W.shape), finite=bool(np.all(np.isfinite(W))),  # type: ignore[arg-type]
        weight=lambda: consts.value(w_name), B=None if bv is None else bv.astype(np.float32),
        w_name=node.input[1], b_name=b_name, kernel=kernel, strides=strides, dilations=dilations,  # type: ignore[arg-type]
        group=a.group, pads=pads, auto_pad=a.auto_pad, in_shape=in4, out_shape=out_shape,  # type: ignore[arg-type]
        pads_reason=reason,
    )
