"""Helpers shared by the lease stores (sqlite, file, redis): ttl checks and polled waiting.

A polled store (one that cannot wait on the server) puts an in-process gate
in front of it: threads of one process queue FIFO on a :class:`LockTable`
(releasing the GIL), and only the thread at the head of the queue polls the
store with backoff. So N threads waiting for one key cost one poller, not N.

The async sources (``sqlite_async``, ``file_async``) queue on the same
``LocalGate.table`` through ``kannuki._compat.atable_acquire`` (tasks of one
loop line up on it, the first one polls) and sleep between tries on the
schedule of :func:`poll_backoff`; :func:`poll` and :meth:`LocalGate.acquire`
are the sync-only spelling of that loop, kept for stores written sync-first.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable

from kannuki._core import Backoff, LockTable
from kannuki.errors import ConfigurationError

__all__ = [
    "DEFAULT_TTL",
    "HOST",
    "INTENT_TTL",
    "POLL_CAP",
    "POLL_FIRST",
    "LocalGate",
    "check_ttl",
    "poll",
    "poll_backoff",
]

DEFAULT_TTL = 30.0
HOST = socket.gethostname()

# Polling schedule between tries of a busy store: exponential from 5 ms, capped at 200 ms, full jitter.
POLL_FIRST = 0.005
POLL_CAP = 0.2

# A writer that waits for a key marks its intent in the store, and new shared holders stay out
# while a mark is live (so a steady stream of overlapping readers cannot starve a writer, as on
# PostgreSQL). The waiter refreshes its mark at every try (at least every POLL_CAP); a mark
# that is not refreshed (its waiter died) expires after this many seconds.
INTENT_TTL = 2.0


def check_ttl(value: object, scheme: str) -> float:
    """A lease length in seconds: a finite number > 0; ConfigurationError naming ``ttl`` otherwise."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"ttl of the {scheme} backend must be a number of seconds > 0, not {value!r}"
        )
    return float(value)


def poll_backoff() -> Backoff:
    """A fresh schedule of the sleeps between tries of a busy store (5 ms doubling to 200 ms, full jitter)."""
    return Backoff("exponential", POLL_FIRST, POLL_CAP, "full")


def poll(
    try_once: Callable[[], int],
    timeout: float | None,
    on_wait: Callable[[], None] | None,
) -> int:
    """Call ``try_once()`` until it returns a token or ``timeout`` (None: forever) runs out; 0 then.

    ``on_wait`` (if not None) is called once, before the first sleep.
    """
    token = try_once()
    if token or timeout == 0:
        return token
    deadline = None if timeout is None else time.monotonic() + timeout
    backoff = poll_backoff()
    if on_wait is not None:
        on_wait()
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return 0
        time.sleep(backoff.next_delay(remaining))
        token = try_once()
        if token:
            return token


class LocalGate:
    """The in-process queue of pollers in front of a polled store, keyed by full lock name.

    Only threads that must wait pass through it: the first try goes straight
    to the store, so an uncontended acquire costs one store round trip.
    Holders never hold the gate, so a lease that expires frees the key for
    this process too.
    """

    def __init__(self) -> None:
        self.table = LockTable()

    def acquire(
        self,
        name: str,
        shared: bool,
        timeout: float | None,
        on_wait: Callable[[], None],
        try_store: Callable[[], int],
    ) -> int:
        """Try the store; if busy, queue locally and poll it in what is left of ``timeout``. Token or 0."""
        token = try_store()
        if token or timeout == 0:
            return token
        on_wait()
        start = time.monotonic()
        gate = self.table.acquire(name, shared, timeout)
        if not gate:
            return 0
        try:
            remaining = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            return poll(try_store, remaining, None)
        finally:
            self.table.release(name, gate)

    def reset_after_fork(self) -> None:
        """In a forked child: no local waiters."""
        self.table.reset_after_fork()
