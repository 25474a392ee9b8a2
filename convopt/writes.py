"""Every file convopt writes: a temporary name, a commit with signals held, no trace after an interruption.

A write goes first to ``.convopt-<pid>-<name>.tmp`` in the target's folder (created with O_EXCL and mode
0o666 & ~umask, the permissions of any new file: never those of the file it replaces), is flushed and
fsynced, and is renamed over the target by :func:`commit`. The files of one run (the model, its external
data, the JSON report) are staged first and renamed together while SIGINT, SIGTERM and SIGHUP are held
(``signal.pthread_sigmask`` in this thread, and the Python handler defers while a commit runs:
:func:`signals_held`): a signal that arrives meanwhile takes effect after the last rename, so a run ends
with all of its files in place or none of them.

:func:`signals_handled` (the CLI wraps every command in it) turns those three signals into
:class:`Interrupted` (exit code 128 + the signal number), removes every live temporary file on the way out,
and keeps the :class:`Journal` of what was written, so the message after an interruption says what is on
disk.

What cannot be helped: SIGKILL (or a power cut) cannot be blocked or handled. Between two renames it leaves
the files renamed so far (a new model beside the previous report), and at any time it leaves the run's
temporary files. Their names carry the PID, so the next run that writes into that folder removes those whose
process is gone (:func:`sweep_stale`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from convopt.errors import OutputError
from convopt.text import safe

TEMP_PREFIX = ".convopt-"
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\.convopt-(\d{1,10})-.+\.tmp$", re.DOTALL)
HANDLED_SIGNALS: tuple[int, ...] = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None
)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; ``exit_code`` is 128 + the signal number (130, 143, 129)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass(frozen=True)
class Staged:
    """A complete temporary file ``tmp`` waiting to be renamed over ``final``."""

    tmp: Path
    final: Path


@dataclass
class Journal:
    """The temporary files alive in this process and the files renamed into place since the command began."""

    live: set[Path] = field(default_factory=set)
    written: list[Path] = field(default_factory=list)
    signum: int | None = None  # the signal that stopped the run
    holding: bool = False  # inside a commit: a signal is recorded in ``pending`` and raised after it
    pending: int | None = None

    def cleanup(self) -> list[Path]:
        """Remove every live temporary file; return those that could not be removed."""
        left = []
        for tmp in sorted(self.live):
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                left.append(tmp)
                continue
            self.live.discard(tmp)
        return left

    def on_disk(self) -> str:
        """What the run left on disk, for the line after an interruption."""
        left = [p for p in self.live if p.exists()]
        said = ("nothing was written" if not self.written
                else "wrote " + " and ".join(safe(p) for p in self.written) + " before stopping")
        if left:
            said += "; could not remove " + ", ".join(safe(p) for p in sorted(left))
        return said


JOURNAL = Journal()
_depth = 0


def temp_path(target: Path) -> Path:
    """``.convopt-<pid>-<name>.tmp`` beside ``target`` (a long name is cut, with a hash, to fit NAME_MAX)."""
    name = target.name
    if len(os.fsencode(name)) > 200:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
        name = os.fsdecode(os.fsencode(name)[:120]).rstrip("\udc80\udcff") + "-" + digest
    return target.parent / f"{TEMP_PREFIX}{os.getpid()}-{name}{TEMP_SUFFIX}"


def _open_temp(tmp: Path) -> int:
    JOURNAL.live.add(tmp)  # registered before it exists: a signal between the two still finds it
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # our PID's name: left by a dead process that had the same PID
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    return os.open(tmp, flags, 0o666)  # the umask applies: default permissions


def discard(staged: Iterable[Staged]) -> None:
    """Remove staged temporary files (after a failure)."""
    for s in staged:
        with contextlib.suppress(OSError):
            s.tmp.unlink()
        JOURNAL.live.discard(s.tmp)


def stage(target: str | os.PathLike[str], chunks: Iterable[bytes | bytearray | memoryview]) -> Staged:
    """Write ``chunks`` to a fresh temporary file beside ``target``, fsynced. Raises OutputError (the folder is
    missing, the disk is full, ...) with the temporary file removed; any other exception (an interruption)
    also removes it."""
    final = Path(target)
    folder = final.parent
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {safe(folder)}; create it first or choose another path")
    tmp = temp_path(final)
    try:
        fd = _open_temp(tmp)
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        discard([Staged(tmp, final)])
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {safe(final)}: {safe(exc.strerror or exc)}") from exc
        raise
    return Staged(tmp, final)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then raise :class:`Interrupted` for one that came.

    Two layers: ``signal.pthread_sigmask`` blocks them in this thread, and the Python handler, which always
    runs in the main thread, only records a signal while ``JOURNAL.holding`` (a process-directed signal can be
    taken by another thread, ORT's or BLAS's, whose mask is not ours, and the main thread would then run the
    handler at its next bytecode)."""
    blocked = hasattr(signal, "pthread_sigmask")
    old = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS) if blocked else None
    JOURNAL.holding = True
    try:
        yield
    finally:
        JOURNAL.holding = False
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a blocked signal is delivered here
        pending, JOURNAL.pending = JOURNAL.pending, None
        if pending is not None and JOURNAL.signum is None:
            JOURNAL.signum = pending
            raise Interrupted(pending)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: not every platform or file system can fsync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(staged: Sequence[Staged]) -> list[Path]:
    """Rename every staged file over its target, in order, with SIGINT/SIGTERM/SIGHUP held until the last
    rename is done. Put a file that others point at first (external data before its model, the model before
    its report). Only SIGKILL or a failing rename can stop it half way; a failing rename removes the rest
    and raises OutputError naming what was already replaced."""
    done: list[Path] = []
    with signals_held():
        for i, s in enumerate(staged):
            try:
                os.replace(s.tmp, s.final)
            except OSError as exc:
                discard(staged[i:])
                already = f" ({', '.join(safe(p) for p in done)} already replaced)" if done else ""
                raise OutputError(f"cannot write {safe(s.final)}: {safe(exc.strerror or exc)}{already}") from exc
            JOURNAL.live.discard(s.tmp)
            JOURNAL.written.append(s.final)
            done.append(s.final)
        for folder in dict.fromkeys(s.final.parent for s in staged):
            _fsync_dir(folder)
    return done


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write bytes to ``path`` atomically: a temporary file in the same folder, fsync, rename."""
    commit([stage(path, [data])])


def _handler(signum: int, _frame: object) -> None:
    if JOURNAL.holding:  # inside a commit: raised when it is done (signals_held)
        JOURNAL.pending = JOURNAL.pending or signum
        return
    if JOURNAL.signum is None:  # the first signal stops the run; later ones must not break the clean-up
        JOURNAL.signum = signum
        raise Interrupted(signum)


@contextlib.contextmanager
def signals_handled() -> Iterator[Journal]:
    """Run a command with SIGINT, SIGTERM and SIGHUP raising :class:`Interrupted`, and remove every temporary
    file it leaves, however it ends. Re-entrant (``demo`` calls ``optimize``): the outermost block owns the
    journal. Outside the main thread signals cannot be caught and only the clean-up applies."""
    global _depth
    outer = _depth == 0
    _depth += 1
    old: dict[int, object] = {}
    if outer:
        JOURNAL.live.clear()
        JOURNAL.written.clear()
        JOURNAL.signum = JOURNAL.pending = None
        JOURNAL.holding = False
        if threading.current_thread() is threading.main_thread():
            for s in HANDLED_SIGNALS:
                old[s] = signal.signal(s, _handler)
    try:
        yield JOURNAL
    finally:
        _depth -= 1
        if outer:
            JOURNAL.holding = True  # the command is over: a signal now only waits for the clean-up
            JOURNAL.cleanup()
            for s, h in old.items():
                signal.signal(s, h)  # type: ignore[arg-type]
            JOURNAL.holding = False
            JOURNAL.pending = None


def sweep_stale(folder: Path) -> list[Path]:
    """Remove ``.convopt-<pid>-*.tmp`` files in ``folder`` whose process no longer runs (left by a SIGKILL);
    return their paths. Files of running processes (and of other users' processes) are left alone."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False) or _alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # EPERM: another user's live process; anything else: keep the file, to be safe
        return True
    return True


def sweep_note(folders: Iterable[Path]) -> str | None:
    """Sweep ``folders`` (:func:`sweep_stale`) and return the one line that says what was removed, or None."""
    removed = [p for folder in dict.fromkeys(folders) for p in sweep_stale(folder)]
    if not removed:
        return None
    return (f"removed {len(removed)} temporary file(s) left by a stopped convopt run: "
            + ", ".join(safe(p) for p in removed))
