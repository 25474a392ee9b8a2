"""The write guard: before any work, every file a command will write is checked against everything it reads.

A target is refused (OutputError, exit 2) when

- it is spelled with a trailing path separator (``-o opts/newdir/``: a folder was meant), or is an existing
  folder, or its folder does not exist, or it exists and is not a regular file (a FIFO, ``/dev/null``);
- it is, or resolves to (symlinks, hard links, ``.``/``..``), one of the run's inputs: the input model, any
  of the model's external-data files, ``--data``/``--labels``/``--calib``, the report being rendered, an
  image of a ``--data`` folder. ``--overwrite`` lets ``-o`` replace the input model and nothing else;
- it is another target of the same run (the model's ``<name>.data`` counts as one). Two names in one folder
  that are equal ignoring case and Unicode normalization count as the same file on every file system
  (on a case-insensitive one they are);
- it exists and is not recognisably convopt's own output of the same kind, unless ``--overwrite``. The
  rule reads at most the first 64 KiB (:func:`looks_like`):

  ======== ===========================================================================================
  model    protobuf that opens with ModelProto.ir_version (byte 0x08, a varint 1-99) followed by a
           ModelProto field tag, as every serialized ONNX model does
  report   a JSON object whose first keys are "model", "output", "passes" (Report.to_dict's order)
  md       starts with ``# convopt report`` (html: ``<!DOCTYPE html>`` + the convopt title; text: the
           line ``convopt report``); any of the three may replace another
  cache    a JSON object that starts with the key "convopt_latency_cache" (or, written before that
           marker, with a "conv:" key, or is empty)
  ======== ===========================================================================================

  The model's ``<name>.data`` file is written only with its model and is not checked for its kind.
"""
from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from convopt.errors import OutputError
from convopt.text import safe

OutputKind = Literal["model", "model-data", "report", "md", "html", "text", "cache"]
PREFIX_BYTES = 64 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

_KIND_DESC: dict[str, str] = {
    "model": "an ONNX model", "report": "a convopt JSON report", "md": "a report rendered by convopt",
    "html": "a report rendered by convopt", "text": "a report rendered by convopt",
    "cache": "a convopt latency cache", "model-data": "external data",
}


@dataclass(frozen=True)
class OutputTarget:
    """A file a command will write. ``option`` names it in messages (``-o``, ``--report``);
    ``folder_syntax``: it was spelled with a trailing separator."""

    path: Path
    kind: OutputKind
    option: str
    folder_syntax: bool = False

    @classmethod
    def of(cls, spelled: str | os.PathLike[str], kind: OutputKind, option: str) -> OutputTarget:
        """The target as the user spelled it (a str keeps its trailing slash; a Path has lost it)."""
        text = os.fspath(spelled)
        seps = tuple(s for s in (os.sep, os.altsep) if s)
        return cls(Path(text), kind, option, isinstance(text, str) and text.endswith(seps) and len(text) > 1)


@dataclass(frozen=True)
class InputFile:
    """A file (or a folder of images) the command reads. ``replaceable``: ``--overwrite`` lets ``-o`` write
    over it (the input model only)."""

    path: Path
    role: str
    replaceable: bool = False


def model_data_target(model: OutputTarget) -> OutputTarget:
    """Where a model over 2 GB puts its weights: ``<name>.data`` beside it."""
    return OutputTarget(model.path.with_name(model.path.name + ".data"), "model-data", f"{model.option} (its .data file)")


def guard_outputs(inputs: Sequence[InputFile], targets: Sequence[OutputTarget], overwrite: bool, *,
                  kinds: bool = True) -> None:
    """Raise OutputError for the first target the module docstring's rules refuse; write nothing.
    ``kinds=False`` leaves out the what-kind-of-file check: a first pass before the input model is read (its
    external-data files, known only then, give the more precise refusal)."""
    for i, t in enumerate(targets):
        _check_place(t)
        for inp in inputs:
            _check_not_input(t, inp, overwrite)
        for other in targets[:i]:
            if same_file(t.path, other.path):
                raise OutputError(f"{other.option} {safe(other.path)} and {t.option} {safe(t.path)} are the same "
                                  "file; give each output its own path")
        if kinds and not overwrite and t.kind != "model-data" and t.path.exists() and not looks_like(t.kind, t.path):
            raise OutputError(f"{t.option} {safe(t.path)} exists and is not {_KIND_DESC[t.kind]}; choose another "
                              "path, or pass --overwrite to replace it")


def _check_place(t: OutputTarget) -> None:
    if t.folder_syntax:
        raise OutputError(f"{t.option} {safe(t.path)}{os.sep} ends with a path separator, so it names a folder; "
                          f"give a file name, e.g. {safe(t.path / 'out.onnx')}")
    if t.path.is_dir():
        raise OutputError(f"{t.option} {safe(t.path)} is a folder; give a file name, e.g. {safe(t.path / 'out.onnx')}")
    folder = t.path.parent
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {safe(folder)}; create it first or choose another path")
    try:
        mode = os.stat(t.path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot use {t.option} {safe(t.path)}: {safe(exc.strerror or exc)}") from None
    if not stat.S_ISREG(mode):
        raise OutputError(f"{t.option} {safe(t.path)} is not a regular file (a device, FIFO or socket); "
                          "convopt writes regular files only")


def _check_not_input(t: OutputTarget, inp: InputFile, overwrite: bool) -> None:
    if inp.path.is_dir():
        if t.path.suffix.lower() in IMAGE_SUFFIXES and same_file(t.path.parent, inp.path):
            raise OutputError(f"{t.option} {safe(t.path)} is in {inp.role} {safe(inp.path)} and named like one of "
                              "its images; write it somewhere else")
        return
    if not same_file(t.path, inp.path):
        return
    if inp.replaceable and t.kind == "model":
        if overwrite:
            return
        raise OutputError(f"refusing to overwrite the input model {safe(inp.path)}; choose another {t.option} "
                          "or pass --overwrite")
    raise OutputError(f"{t.option} {safe(t.path)} is {inp.role}; convopt never writes over the files it reads: "
                      "choose another path")


def _fold(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: one inode when both exist (symlinks and hard links included); else
    the same absolute path after resolving symlinks, or names equal ignoring case in the same folder."""
    try:
        sa, sb = os.stat(a), os.stat(b)
        return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
    except (OSError, ValueError):
        pass
    ra, rb = Path(os.path.abspath(a)).resolve(), Path(os.path.abspath(b)).resolve()
    if ra == rb:
        return True
    if _fold(ra.name) != _fold(rb.name):
        return False
    try:
        return os.path.samefile(ra.parent, rb.parent)
    except OSError:
        return ra.parent == rb.parent


# ---------------------------------------------------------------------------------------------------------
# Is an existing file convopt's own output of this kind?

_MODEL_TAGS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72, 0xA2, 0xCA, 0xD2}
_STR = r'"(?:[^"\\]|\\.)*"'
_REPORT_RE = re.compile(rf'\A\s*\{{\s*"model"\s*:\s*(?:{_STR}|null)\s*,\s*"output"\s*:\s*(?:{_STR}|null)\s*,'
                        rf'\s*"passes"\s*:\s*\[', re.DOTALL)
_CACHE_RE = re.compile(r'\A\s*\{\s*(?:"convopt_latency_cache"\s*:|"conv:|\}\s*\Z)')
_RENDERED = (b"# convopt report\n", b"convopt report\n",
             b'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>convopt report')


def _is_onnx(head: bytes) -> bool:
    """ir_version first (tag 0x08, a one-byte varint 1-99), then another ModelProto field (or the end)."""
    return len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] <= 99 and (len(head) == 2 or head[2] in _MODEL_TAGS)


def looks_like(kind: OutputKind, path: Path) -> bool:
    """Whether the existing file at ``path`` is recognisably convopt's output of ``kind`` (module docstring),
    judged on its first 64 KiB."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(PREFIX_BYTES)
    except OSError:
        return False
    if kind == "model":
        return _is_onnx(head)
    if kind in ("md", "html", "text"):
        return head.startswith(_RENDERED)
    text = head.decode("utf-8", "replace")
    if kind == "report":
        return _REPORT_RE.match(text) is not None
    if kind == "cache":
        return _CACHE_RE.match(text) is not None
    return False
