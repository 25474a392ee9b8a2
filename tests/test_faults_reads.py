"""Fault injection, issue 15 rows 6, 7, 8, 13, 15, 16 and items 4, 6: reads are bounded, and anything the user
supplies gives exit 2 (or 0), never 3.

Devices, FIFOs and oversized files are refused before a byte is read; an .npz is judged on its headers and
read only up to --limit rows; evaluation data that would not fit the machine is refused with the figure;
complex, structured and string arrays and labels beyond int64 are refused; out-of-range options are exit 2."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from numpy.lib import format as npformat
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from convopt.cli import app
from convopt.limits import available_cores

from tests.faults import count, no_temporaries, print_counts, snapshot
from tests.helpers import conv_model

runner = CliRunner()
CASES: Counter[str] = Counter()


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    m = conv_model(cin=3, cout=8, k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(8, 8))
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    return tmp_path


def _exit2(args: list[str], folder: Path, needle: str, row: str) -> str:
    before = snapshot(folder)
    r = runner.invoke(app, args)
    assert r.exit_code == 2, (args, r.output)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (args, r.output)
    assert snapshot(folder) == before and no_temporaries(folder) == []
    count(CASES, row)
    return lines[0]


# ------------------------------------------------------------------ row 6: devices, FIFOs, size limits


def test_row6_devices_and_oversized_files_are_refused_unread(work: Path) -> None:
    for cmd in (["inspect", "/dev/zero"], ["report", "/dev/zero"], ["optimize", "/dev/zero", "-o",
                                                                     str(work / "o.onnx"), "--no-eval"]):
        _exit2(cmd, work, "not a regular file", "row6")
    _exit2(["inspect", str(work)], work, "is a folder", "row6")
    _exit2(["inspect", str(work / "m.onnx"), "--max-model-bytes", "1000"], work, "is larger than the 1000 B", "row6")
    _exit2(["inspect", "/proc/self/status"], work, "not an ONNX model", "row6")


def test_row6_a_fifo_does_not_hang(work: Path) -> None:
    fifo = work / "pipe.onnx"
    os.mkfifo(fifo)
    for cmd in (["inspect", str(fifo)], ["report", str(fifo)]):
        r = subprocess.run([sys.executable, "-m", "convopt.cli", *cmd], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "not a regular file" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        count(CASES, "row6")
    np.savez(work / "real.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    for labels in ("l.csv", "l.npy"):
        os.mkfifo(work / labels)
        _exit2(["optimize", str(work / "m.onnx"), "--data", str(work / "real.npz"), "--labels", str(work / labels),
                "-o", str(work / "o.onnx"), "--strategy", "uniform"], work, "not a regular file", "row6")
    os.mkfifo(work / "d.npz")
    _exit2(["optimize", str(work / "m.onnx"), "--data", str(work / "d.npz"), "-o", str(work / "o.onnx"),
            "--strategy", "uniform"], work, "not a regular file", "row6")


def test_row6_model_with_external_data_counts_in_the_limit(work: Path) -> None:
    from onnx import external_data_helper

    m = conv_model(cin=16, cout=16, k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(8, 8))
    external_data_helper.convert_model_to_external_data(m, location="w.bin", size_threshold=0)
    onnx.save_model(m, str(work / "ext.onnx"))
    size = (work / "ext.onnx").stat().st_size
    line = _exit2(["inspect", str(work / "ext.onnx"), "--max-model-bytes", str(size + 100)], work,
                  "and its external data hold", "row6")
    assert "--max-model-bytes" in line


# ------------------------------------------------------------------ row 7: evaluation data over the memory limit


def test_row7_random_data_too_large_for_the_machine(work: Path) -> None:
    w = numpy_helper.from_array(np.ones((4, 8, 3, 3), np.float32), "W")
    n = helper.make_node("Conv", ["x", "W"], ["y"], name="c", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    g = helper.make_graph([n], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 60000, 60000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 60000, 60000])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    (work / "huge.onnx").write_bytes(m.SerializeToString())
    line = _exit2(["optimize", str(work / "huge.onnx"), "-o", str(work / "o.onnx")], work, "858 GiB", "row7")
    assert "8 samples of x 8x60000x60000 float32" in line and "--no-eval" in line


def test_random_data_is_made_in_the_inputs_dtype() -> None:
    from convopt.measure.data import random_eval_data

    for elem, dtype in ((TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16),
                        (TensorProto.INT32, np.int32), (TensorProto.UINT8, np.uint8), (TensorProto.BOOL, np.bool_)):
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", elem, [1, 3])],
                              [helper.make_tensor_value_info("y", elem, [1, 3])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        d = random_eval_data(m, {"x": (1, 3)}, samples=5)
        assert d.inputs["x"].dtype == dtype and d.inputs["x"].shape == (5, 3)


# ------------------------------------------------------------------ row 8: an .npz that declares more than it holds


def _npz_declaring(path: Path, shape: tuple[int, ...], chunk_mib: int = 8) -> None:
    """An .npz whose member x declares ``shape`` float32 and really holds it, as zeros written in chunks
    (compressed: a few MB on disk for GiBs declared), without ever holding the array in memory."""
    header = {"descr": npformat.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as fh:
            npformat.write_array_header_1_0(fh, header)
            left = int(np.prod(shape)) * 4
            zeros = bytes(chunk_mib * 2**20)
            while left > 0:
                fh.write(zeros[:min(left, len(zeros))])
                left -= len(zeros)


def test_row8_limit_bounds_what_is_read_from_a_2gib_npz(work: Path) -> None:
    npz = work / "big.npz"
    _npz_declaring(npz, (2**31 // (3 * 8 * 8 * 4), 3, 8, 8))
    assert npz.stat().st_size < 8 * 2**20, "the test needs a small file that declares 2 GiB"
    r = runner.invoke(app, ["optimize", str(work / "m.onnx"), "--data", str(npz), "--limit", "4", "--strategy",
                            "uniform", "-o", str(work / "o.onnx"), "--report", str(work / "r.json"), "-q",
                            "--repeats", "2", "--warmup", "1"])
    assert r.exit_code == 0, r.output

    rows = 2**31 // (3 * 8 * 8 * 4)
    assert f"(4 of {rows} samples)" in (work / "r.json").read_text()
    count(CASES, "row8")


def test_row8_npz_that_holds_less_than_it_declares(work: Path) -> None:
    npz = work / "lie.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 3, 8, 8)}
    with zipfile.ZipFile(npz, "w") as z, z.open("x.npy", "w") as fh:
        npformat.write_array_header_1_0(fh, header)
        fh.write(bytes(1000))
    base = ["optimize", str(work / "m.onnx"), "--data", str(npz), "--strategy", "uniform", "-o", str(work / "o.onnx")]
    _exit2(base + ["--limit", "2"], work, "is truncated", "row8")
    header["shape"] = (10**7, 3, 8, 8)  # 7.2 GiB declared: refused on the header, before reading
    with zipfile.ZipFile(npz, "w") as z, z.open("x.npy", "w") as fh:
        npformat.write_array_header_1_0(fh, header)
    line = _exit2(base, work, "needs 7.15 GiB of memory", "row7")
    assert "--limit" in line


# ------------------------------------------------------------------ row 13/16: what the data and labels hold


@pytest.mark.parametrize("name,array,needle", [
    ("complex", np.ones((4, 3, 8, 8), np.complex64), "holds complex numbers"),
    ("structured", np.zeros((4, 3, 8, 8), dtype=[("a", "<f4")]), "structured"),
    ("strings", np.full((4, 3, 8, 8), "x"), "holds strings"),
    ("dates", np.zeros((4, 3, 8, 8), "datetime64[s]"), "holds dates"),
])
def test_row13_arrays_that_are_not_real_numbers(work: Path, name: str, array: np.ndarray, needle: str) -> None:
    np.savez(work / "d.npz", x=array)
    _exit2(["optimize", str(work / "m.onnx"), "--data", str(work / "d.npz"), "--strategy", "uniform", "-o",
            str(work / "o.onnx")], work, needle, f"row13:{name}")
    np.save(work / "d.npy", array)
    _exit2(["optimize", str(work / "m.onnx"), "--data", str(work / "d.npy"), "--strategy", "uniform", "-o",
            str(work / "o.onnx")], work, "", f"row13:{name}")


def test_row13_object_arrays_are_refused(work: Path) -> None:
    np.savez(work / "d.npz", x=np.array([[1], "a"], dtype=object))
    _exit2(["optimize", str(work / "m.onnx"), "--data", str(work / "d.npz"), "--strategy", "uniform", "-o",
            str(work / "o.onnx")], work, "", "row13:object")


@pytest.mark.parametrize("kind", ["csv", "npy-uint64", "npy-float", "npz-strings"])
def test_row13_labels_beyond_int64(work: Path, kind: str) -> None:
    np.savez(work / "d.npz", x=np.zeros((2, 3, 8, 8), np.float32))
    lab = work / ("l.csv" if kind == "csv" else "l.npy" if kind.startswith("npy") else "l.npz")
    if kind == "csv":
        lab.write_text(f"label\n1\n{2**70}\n")
    elif kind == "npy-uint64":
        np.save(lab, np.array([1, 2**64 - 1], np.uint64))
    elif kind == "npy-float":
        np.save(lab, np.array([1.0, 1e30]))
    else:
        np.savez(lab, labels=np.array(["a", "b"]))
    _exit2(["optimize", str(work / "m.onnx"), "--data", str(work / "d.npz"), "--labels", str(lab), "--strategy",
            "uniform", "-o", str(work / "o.onnx")], work, "", f"row13:labels-{kind}")


def test_row13_nul_byte_in_an_external_data_location(work: Path) -> None:
    m = conv_model(cin=3, cout=8, k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(8, 8))
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "w\x00.bin"), ("offset", "0"), ("length", "16")):
        e = w.external_data.add()
        e.key, e.value = k, v
    (work / "nul.onnx").write_bytes(m.SerializeToString())
    for cmd in (["inspect", str(work / "nul.onnx")], ["optimize", str(work / "nul.onnx"), "--no-eval"]):
        line = _exit2(cmd, work, "NUL byte", "row13:nul")
        assert "\\x00" in line and "\x00" not in line


@pytest.mark.parametrize("option,value", [
    ("--seed", "-1"), ("--threads", "-1"), ("--warmup", "-1"), ("--repeats", "0"),
    ("--latency-batch", "0"), ("--align", "0"), ("--limit", "0"), ("--max-model-bytes", "0"),
    ("--fail-under-speedup", "nan"), ("--fail-under-speedup", "-1"), ("--max-accuracy-drop", "-1"),
    ("--min-agreement", "101"), ("--max-rel-error", "inf"),
])
def test_row13_out_of_range_options_exit_2(work: Path, option: str, value: str) -> None:
    _exit2(["optimize", str(work / "m.onnx"), "-o", str(work / "o.onnx"), option, value], work, option, "row13:option")


# ------------------------------------------------------------------ row 15: --threads beyond the cores


def test_row15_threads_are_capped_with_one_warning(work: Path) -> None:
    import json

    r = runner.invoke(app, ["optimize", str(work / "m.onnx"), "-o", str(work / "o.onnx"), "--threads", "100000",
                            "--report", str(work / "r.json"), "--repeats", "2", "--warmup", "1", "--full-rank"])
    assert r.exit_code == 0, r.output
    cores = available_cores()
    said = [line for line in r.output.splitlines() if "--threads" in line]
    assert said == [f"warning: --threads 100000 is more than the {cores} core(s) available; using {cores}"]
    assert json.loads((work / "r.json").read_text())["settings"]["ort"]["threads"] == cores
    r = runner.invoke(app, ["optimize", str(work / "m.onnx"), "-o", str(work / "o.onnx"), "--threads", "100000",
                            "-q", "--repeats", "2", "--warmup", "1", "--full-rank"])
    assert r.exit_code == 0 and r.output == "", r.output
    count(CASES, "row15")


def test_print_counts(capsys: pytest.CaptureFixture[str]) -> None:
    if not CASES:
        pytest.skip("the cases above were deselected")
    print_counts(capsys, "bounded read", CASES)
