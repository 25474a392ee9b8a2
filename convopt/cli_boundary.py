"""The CLI's boundary with the user: the consoles, usage errors as one line (exit 2), convopt's errors as their
exit codes, signals as 130/143/129 with nothing half-written, warnings as one line each, output paths as typed.
Every command of convopt.cli runs inside ``guarded``."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from typer.core import TyperGroup

from convopt.errors import ConvOptError, OutputError
from convopt.text import one_line, safe
from convopt.writes import Interrupted, signals_handled

err = Console(stderr=True, highlight=False, emoji=False)
# stdout: the terminal's width; in a pipe or a CI log COLUMNS when set, else 160 (rich's default there is 80)
out = Console(highlight=False, emoji=False,
              width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 160)


class Group(TyperGroup):
    """Usage errors of the CLI framework (an unknown option, a bad value) come out like convopt's own errors:
    one line on stderr, exit 2 — from the console script and from any caller of the app alike."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            err.print("interrupted: nothing was written", markup=False)
            rv, standalone_mode = 130, True
        except typer.TyperException as exc:  # the CLI framework's usage errors (typer vendors click)
            rv, standalone_mode = usage_error(exc), True
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def usage_error(exc: Any) -> int:
    if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments: the help is the answer
        exc.show()
        return int(exc.exit_code)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    err.print(f"error: {exc.format_message()}{hint}", markup=False, soft_wrap=True)
    return int(exc.exit_code)


def fail(exc: ConvOptError) -> typer.Exit:
    err.print(f"error: {one_line(exc)}", markup=False, soft_wrap=True)
    return typer.Exit(exc.exit_code)


@contextlib.contextmanager
def warnings_as_lines(quiet: bool) -> Iterator[None]:
    """Python warnings (numpy's, onnx checker's captured output) as one escaped line each; none under -q."""
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        else:
            def show(message: Warning | str, *_a: Any, **_k: Any) -> None:
                err.print(f"warning: {one_line(message)}", markup=False, soft_wrap=True)

            warnings.showwarning = show  # type: ignore[assignment]
        yield


def guarded(fn: Callable[..., None]) -> Callable[..., None]:
    """The CLI boundary: ConvOptError → its exit code; SIGINT, SIGTERM, SIGHUP → 130, 143, 129 with every
    temporary file removed and one line saying what is on disk (convopt.writes); any other exception → exit 3
    with one line (CONVOPT_DEBUG=1 re-raises it for the traceback). Every line is escaped (convopt.text).
    Typer reads the signature through functools.wraps."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        with signals_handled() as journal, warnings_as_lines(bool(kwargs.get("quiet", False))):
            try:
                fn(*args, **kwargs)
            except ConvOptError as exc:
                raise fail(exc) from None
            except KeyboardInterrupt as exc:
                journal.signum = journal.signum or 2  # later signals must not break the clean-up
                code = exc.exit_code if isinstance(exc, Interrupted) else 130
                name = str(exc) if isinstance(exc, Interrupted) else "SIGINT"
                journal.cleanup()
                err.print(f"interrupted by {name}: {journal.on_disk()}", markup=False, soft_wrap=True)
                raise typer.Exit(code) from None
            except (typer.Exit, typer.Abort, SystemExit):
                raise
            except Exception as exc:  # the one place convopt catches everything: report a bug in one line
                if os.environ.get("CONVOPT_DEBUG") == "1":
                    raise
                first = safe((str(exc).strip().splitlines() or [""])[0])
                err.print(f"internal error: {type(exc).__name__}: {first} (a convopt bug, please report it; "
                          "CONVOPT_DEBUG=1 shows the traceback)", markup=False, soft_wrap=True)
                raise typer.Exit(3) from None

    return wrapper


def out_path(spelled: str | None, option: str) -> Path | None:
    """An output path as typed: a trailing separator means a folder (``-o opts/newdir/``), refused here
    because a Path forgets it (convopt.outputs refuses the rest)."""
    from convopt.outputs import OutputTarget

    if spelled is None:
        return None
    if OutputTarget.of(spelled, "model", option).folder_syntax:
        raise OutputError(f"{option} {safe(spelled)} ends with a path separator, so it names a folder; give a file "
                          "name inside it")
    return Path(spelled)
