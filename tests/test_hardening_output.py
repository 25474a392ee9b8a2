"""Safe output: atomic writes (temp file + rename in the same folder), a full disk or an interruption leaves
the input and any previous output intact with no partial files, -o equal to the input needs --overwrite,
and models over 2 GB are written with external data beside the output."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

import convopt.io as cio
from convopt.cli import app
from convopt.errors import OutputError
from convopt.io import atomic_write_bytes, load_model, save_model

from tests.helpers import NO_SHARED, SHARED_MODELS, conv_model

runner = CliRunner()
# a previous output of convopt: an ONNX model (the write guard replaces only what it recognises as one)
PREVIOUS = conv_model(cin=2, cout=2, k=(1, 1), batch=1, hw=(2, 2)).SerializeToString()


@pytest.fixture()
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "in" / "m.onnx"
    p.parent.mkdir()
    p.write_bytes(conv_model(cin=32, cout=32, k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(12, 12)).SerializeToString())
    return p


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _enospc(*_a: object, **_k: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ------------------------------------------------------------------ atomic write, disk full, interruption


def test_disk_full_during_write_keeps_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.onnx"
    out.write_bytes(PREVIOUS)
    monkeypatch.setattr(cio.os, "fsync", _enospc)
    with pytest.raises(OutputError, match="No space left"):
        atomic_write_bytes(out, b"new" * 1000)
    assert out.read_bytes() == PREVIOUS
    assert _names(tmp_path) == ["out.onnx"], "temp file left behind"


def test_interrupt_during_write_keeps_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.onnx"
    out.write_bytes(PREVIOUS)

    def interrupt(_fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cio.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(out, b"new" * 1000)
    assert out.read_bytes() == PREVIOUS
    assert _names(tmp_path) == ["out.onnx"]


def test_cli_disk_full_exit_2_one_line(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "o.onnx"
    out.write_bytes(PREVIOUS)
    before = model_file.read_bytes()
    monkeypatch.setattr(cio.os, "fsync", _enospc)
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(out), "--no-eval", "-q"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines() == [f"error: cannot write {out}: No space left on device"]
    assert out.read_bytes() == PREVIOUS and _names(outdir) == ["o.onnx"]
    assert model_file.read_bytes() == before and _names(model_file.parent) == ["m.onnx"]


def test_cli_interrupt_while_saving_exit_130(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "o.onnx"
    out.write_bytes(PREVIOUS)

    def interrupt(_fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cio.os, "fsync", interrupt)
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(out), "--no-eval", "-q"])
    assert r.exit_code == 130, r.output
    assert "Traceback" not in r.output
    assert out.read_bytes() == PREVIOUS and _names(outdir) == ["o.onnx"]


@pytest.fixture()
def tiny_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 64 KiB file system (needs root and mount; skipped otherwise)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_cli_real_full_disk_keeps_previous_output(model_file: Path, tiny_tmpfs: Path) -> None:
    """The optimized model (~150 KB) does not fit in 64 KiB: exit 2, the previous output intact, no temp file."""
    out = tiny_tmpfs / "o.onnx"
    out.write_bytes(PREVIOUS)
    before = model_file.read_bytes()
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(out), "--no-eval", "-q", "--full-rank",
                            "--passes", "factorize"])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], r.output
    assert out.read_bytes() == PREVIOUS
    assert _names(tiny_tmpfs) == ["o.onnx"], "partial file left on the full disk"
    assert model_file.read_bytes() == before


def test_new_output_gets_normal_permissions(tmp_path: Path) -> None:
    """A new file gets 0o666 & ~umask, never mkstemp's 0o600 and never the mode of the file it replaces
    (a setuid bit must not survive)."""
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "new.onnx", b"x")
        p = tmp_path / "exec.bin"
        p.write_bytes(b"old")
        p.chmod(0o4755)
        atomic_write_bytes(p, b"new")
    finally:
        os.umask(old)
    assert (tmp_path / "new.onnx").stat().st_mode & 0o7777 == 0o644
    assert p.stat().st_mode & 0o7777 == 0o644, "the replaced file's mode (setuid) survived"


# ------------------------------------------------------------------ refusing to overwrite the input


def test_output_equal_to_input_refused_also_through_links(model_file: Path) -> None:
    before = model_file.read_bytes()
    link = model_file.parent / "link.onnx"
    link.symlink_to(model_file)
    hard = model_file.parent / "hard.onnx"
    os.link(model_file, hard)
    for target in (model_file, link, hard, model_file.parent / "." / "m.onnx"):
        r = runner.invoke(app, ["optimize", str(model_file), "-o", str(target), "--no-eval", "-q"])
        assert r.exit_code == 2 and "refusing to overwrite" in r.output, (target, r.output)
        assert r.output.count("\n") == 1
    assert model_file.read_bytes() == before
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(model_file), "--no-eval", "-q", "--overwrite"])
    assert r.exit_code == 0, r.output
    onnx.checker.check_model(onnx.load(str(model_file)))
    assert _names(model_file.parent) == ["hard.onnx", "link.onnx", "m.onnx"]


def test_report_equal_to_input_refused(model_file: Path) -> None:
    before = model_file.read_bytes()
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(model_file.parent / "o.onnx"), "--no-eval",
                            "-q", "--report", str(model_file)])
    assert r.exit_code == 2 and "is the input model; convopt never writes over the files it reads" in r.output
    assert model_file.read_bytes() == before


def test_output_into_missing_folder_exit_2(model_file: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(tmp_path / "nope" / "o.onnx"), "--no-eval", "-q"])
    assert r.exit_code == 2 and "output folder does not exist" in r.output and r.output.count("\n") == 1


def test_output_is_a_folder_exit_2(model_file: Path, tmp_path: Path) -> None:
    d = tmp_path / "a_dir.onnx"
    d.mkdir()
    r = runner.invoke(app, ["optimize", str(model_file), "-o", str(d), "--no-eval", "-q"])
    assert r.exit_code == 2 and "is a folder" in r.output and r.output.count("\n") == 1, r.output
    assert _names(d) == [] and _names(tmp_path).count("a_dir.onnx") == 1


# ------------------------------------------------------------------ models over 2 GB: external data


def _big_model() -> onnx.ModelProto:
    return conv_model(cin=16, cout=32, k=(3, 3), pads=(1, 1, 1, 1), batch=1, hw=(8, 8))


def test_large_model_written_with_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the protobuf limit lowered to 1 KB, save_model takes the >2 GB path: model + .data beside it."""
    monkeypatch.setattr(cio, "PROTOBUF_LIMIT", 1024)
    m = _big_model()
    out = tmp_path / "big.onnx"
    written = save_model(m, out)
    assert written == [out, tmp_path / "big.onnx.data"]
    assert _names(tmp_path) == ["big.onnx", "big.onnx.data"], "temp folder left behind"
    assert out.stat().st_size < 1024
    back = load_model(out)
    for a, b in zip(m.graph.initializer, back.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    # the location written is relative: the pair can be moved together
    raw = onnx.load(str(out), load_external_data=False)
    locs = {e.value for t in raw.graph.initializer for e in t.external_data if e.key == "location"}
    assert locs == {"big.onnx.data"}


def test_large_model_validated_without_the_full_checker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above FULL_CHECK_LIMIT the checker runs on a weight-free skeleton, and tensor sizes are checked apart:
    a short weight is still refused with one clear error (not a numpy traceback later)."""
    m = _big_model()
    monkeypatch.setattr(cio, "FULL_CHECK_LIMIT", 1024)
    cio.validate_model(m, "big")
    for field, value in (("data_type", 0), ("float_data", [1.0])):
        bad = _big_model()
        w = bad.graph.initializer[0]
        if field == "data_type":
            w.data_type = value  # type: ignore[assignment]
        else:
            getattr(w, field).extend(value)  # type: ignore[arg-type]
        with pytest.raises(cio.ModelLoadError, match="invalid ONNX model: tensor 'W'"):
            cio.validate_model(bad, "big")
    m.graph.initializer[0].raw_data = m.graph.initializer[0].raw_data[:-4]
    with pytest.raises(cio.ModelLoadError, match="big: invalid ONNX model: tensor 'W' has 18428 bytes"):
        cio.validate_model(m, "big")
    bad = _big_model()
    bad.graph.node[0].input[0] = "nope"
    with pytest.raises(cio.ModelLoadError, match="invalid ONNX model"):
        cio.validate_model(bad, "big")


def test_large_model_disk_full_keeps_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cio, "PROTOBUF_LIMIT", 1024)
    out = tmp_path / "big.onnx"
    out.write_bytes(PREVIOUS)
    monkeypatch.setattr(cio.os, "fsync", _enospc)
    with pytest.raises(OutputError, match="No space left"):
        save_model(_big_model(), out)
    assert out.read_bytes() == PREVIOUS
    assert _names(tmp_path) == ["big.onnx"]


def test_large_model_refuses_input_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cio, "PROTOBUF_LIMIT", 1024)
    p = tmp_path / "m.onnx"
    p.write_bytes(PREVIOUS)
    with pytest.raises(OutputError, match="refusing to overwrite"):
        save_model(_big_model(), p, input_path=p)
    assert p.read_bytes() == PREVIOUS


# ------------------------------------------------------------------ Ctrl-C on a real run


@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=NO_SHARED)
def test_ctrl_c_during_real_run_leaves_no_partial_files(tmp_path: Path) -> None:
    src = SHARED_MODELS / "squeezenet1.1.onnx"
    model = tmp_path / "sq.onnx"
    model.write_bytes(src.read_bytes())
    before = model.read_bytes()
    out = tmp_path / "sq.out.onnx"
    out.write_bytes(PREVIOUS)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "convopt.cli", "optimize", str(model), "-o", str(out), "--report",
         str(tmp_path / "r.json"), "--repeats", "2000", "--warmup", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    time.sleep(2.0)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("convopt did not stop within 60 s of Ctrl-C")
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert "interrupted" in stderr
    assert _names(tmp_path) == ["sq.onnx", "sq.out.onnx"], "partial or temp files left behind"
    assert out.read_bytes() == PREVIOUS
    assert model.read_bytes() == before
