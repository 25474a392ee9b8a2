"""Joining a Ray cluster for ``--executor ray``: the import guard of the ``ray`` extra, a quick probe of the
address, and ``ray.init`` with Ctrl-C held back while it runs."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from convopt.errors import InputError

INSTALL_HINT = '--executor ray needs Ray: pip install "convopt[ray]" (or use --executor local)'
try:
    import ray
except ImportError:  # the extra is not installed
    raise InputError(INSTALL_HINT) from None

PROBE_TIMEOUT_S = 5.0


def _probe(address: str) -> None:
    """One line and exit 2 when nothing listens at ``host:port`` (Ray itself would retry for a minute)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address {address!r} is not host:port or auto; e.g. --ray-address 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise InputError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start its head with "
                         "`ray start --head` there, or check --ray-address") from None


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address`` (None: start a local instance with every CPU; ``auto``: the
    cluster this machine belongs to). True when this call started Ray here (so closing shuts it down); an
    already initialized Ray (a program that called ray.init itself) is used as it is."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home from a CI job
    if address not in (None, "auto"):
        _probe(address)
    with _held_interrupt() as interrupted:
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            ray.shutdown()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = "a running Ray cluster (auto)" if address == "auto" else f"the Ray cluster at {address}"
            raise InputError(f"cannot reach {where}: {first}; start one with `ray start --head`, or check "
                             "--ray-address") from None
    if interrupted:
        ray.shutdown()
        raise KeyboardInterrupt
    return True


@contextmanager
def _held_interrupt() -> Iterator[list[int]]:
    """Ctrl-C held back until the block ends (the list then holds the signal). Interrupted inside ray.init,
    Ray's core is left half set up and the process crashes at exit (seen with Ray 2.60); ray.init takes
    seconds, so the interrupt waits that long at most. Only the main thread can hold signals."""
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: got.append(signum))
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, previous)
