"""Shared pieces of the fault-injection suite (tests/test_faults_*.py, issue 15): hostile names, the case
counter each file prints at its end, and checks that a run left the user's files as they were."""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ESC = "\x1b[2J\x1b]0;PWNED\x07"
RLO = "\u202eevil"
NEWLINE = "line1\nline2"
HOSTILE_NAMES = [f"conv{ESC}", f"conv{RLO}", f"conv{NEWLINE}", "conv\x9b31m\u200b\ufeff"]
RAW_FORBIDDEN = ["\x1b", "\x07", "\u202e", "\x9b", "\u200b", "\ufeff"]


def count(counter: Counter[str], row: str, n: int = 1) -> None:
    counter[row] += n


def print_counts(capsys, label: str, counter: Counter[str]) -> None:  # noqa: ANN001
    """Print "<label> fault cases: row=n, ..." past pytest's capture (as tests/test_properties.py does)."""
    with capsys.disabled():
        print(f"\n{label} fault cases: {sum(counter.values())} (" +
              ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) + ")")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (names relative to it) → sha256 of its bytes (or 'dir')."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link->" + str(p.readlink())
        elif p.is_dir():
            out[rel] = "dir"
        elif not p.is_file():
            out[rel] = "special"  # a FIFO: reading it would block
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def no_temporaries(folder: Path) -> list[str]:
    """Names of convopt temporary files under ``folder`` (should be empty)."""
    return [p.name for p in folder.rglob("*") if p.name.startswith(".convopt-") or p.name.endswith(".tmp")]


def named_model(names: list[str], cin: int = 4, hw: int = 8) -> onnx.ModelProto:
    """x → one 3×3 conv per name (each named by it, its output too) → y; factorize applies to each."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i, name in enumerate(names):
        w = numpy_helper.from_array(rng.standard_normal((cin, cin, 3, 3)).astype(np.float32), f"W{i}")
        inits.append(w)
        out = "y" if i == len(names) - 1 else f"{name}/out"
        nodes.append(helper.make_node("Conv", [prev, w.name], [out], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        prev = out
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cin, hw, hw])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m
