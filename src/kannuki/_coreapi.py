"""The contract both core twins meet: ``kannuki._native`` (Cython) and ``kannuki._pure``.

The dispatcher (:mod:`kannuki._core`) loads one of them; everything else in
kannuki talks to the core only through these names. A test checks that both
twins export exactly ``CORE_NAMES`` and agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol

# Longest full lock name (prefix, colon and key, UTF-8 encoded) that kannuki accepts.
MAX_NAME_BYTES = 65536

BACKOFF_KINDS = ("constant", "linear", "exponential")
JITTER_KINDS = ("none", "full", "decorrelated")

CORE_NAMES = (
    "Backoff",
    "Counters",
    "LockBase",
    "LockTable",
    "MAX_NAME_BYTES",
    "PlainPath",
    "SyncLockBase",
    "TokenSet",
    "full_name",
    "hash_text_extended",
    "lock_id",
    "name_and_id",
)


class HashFunctions(Protocol):
    def hash_text_extended(self, data: bytes, seed: int = 0) -> int:
        """PostgreSQL's ``hashtextextended`` (lookup3 ``hash_bytes_extended``) over bytes, as a signed 64-bit int."""

    def full_name(self, key: str, prefix: str | None = None) -> str:
        """Validate ``key`` / ``prefix`` and return ``f"{prefix}:{key}"`` (or ``key`` with no prefix).

        Raises TypeError (wrong type) or ValueError (empty, lone surrogate,
        longer than MAX_NAME_BYTES) naming the parameter.
        """

    def lock_id(self, key: str, prefix: str | None = None) -> int:
        """``hash_text_extended(full_name(key, prefix).encode(), 0)``."""

    def name_and_id(self, key: str, prefix: str | None = None) -> tuple[str, int]:
        """``(full_name(key, prefix), lock_id(key, prefix))`` in one pass."""


class BackoffProtocol(Protocol):
    attempt: int

    @property
    def kind(self) -> str:
        """One of ``BACKOFF_KINDS``."""

    @property
    def jitter(self) -> str:
        """One of ``JITTER_KINDS``."""

    @property
    def interval(self) -> float:
        """The base delay, in seconds."""

    @property
    def cap(self) -> float:
        """The longest delay, in seconds."""

    def __init__(
        self,
        kind: str = "exponential",
        interval: float = 0.05,
        cap: float = 2.0,
        jitter: str = "full",
        seed: int | None = None,
    ) -> None: ...

    def next_delay(self, remaining: float | None = None) -> float:
        """The delay before the next attempt, never above ``cap`` nor ``remaining``."""

    def reset(self) -> None:
        """Start the schedule over (attempt 0); the random stream goes on."""


class CountersProtocol(Protocol):
    """A locker's stats, updated without a lock in the native twin (no bytecode runs inside)."""

    def acquired(self) -> float:
        """Count one acquisition; return ``time.monotonic()``, the start of the hold."""

    def released(self, since: float) -> float:
        """Count one release of a hold begun at ``since``; return the seconds held."""

    def add(self, name: str) -> None:
        """Count one of ``COUNTER_NAMES``; ValueError naming ``name`` otherwise."""

    def snapshot(self) -> tuple[int, int, int, int, int, int, int, float]:
        """``(acquired, failed, timeouts, released, lost, renewed, renew_failed, hold_time)``."""


COUNTER_NAMES = ("failed", "timeouts", "lost", "renewed", "renew_failed")


class LockTableProtocol(Protocol):
    def __init__(self, clock: Callable[[], float] | None = None) -> None: ...

    def acquire(
        self,
        key: Hashable,
        shared: bool = False,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> int:
        """Take ``key``; return a fencing token (> 0), or 0 when not acquired in ``timeout``.

        ``timeout`` None waits forever, 0 tries once. Waiters are served FIFO;
        the wait releases the GIL and a signal handler's exception (Ctrl-C)
        propagates with nothing left held or queued, even when it comes just
        as the key is handed over (the token is given back, never lost).

        Each holder belongs to the thread that acquired it (a number never
        reused by a later thread, unlike ``threading.get_ident()``; a hold
        left by a thread that ended is nobody's). Before it waits, a thread
        walks the wait-for graph across every table of the process (the
        holders of ``key`` -> the key each of those threads waits for -> its
        holders ...) and raises :class:`kannuki.errors.DeadlockError` at
        once, with nothing held or queued, for (SPEC §3) a wait WITHOUT a
        timeout for a key this thread holds already (exclusive; or shared and
        asking for exclusive, or shared again behind a queued exclusive
        request it blocks), and for any wait, timed or not, that closes a
        cycle among threads (1 holds A and waits for B, 2 holds B and asks
        for A: 2 gets the error). A timed wait on a key only this thread
        blocks just times out (another thread may be about to release it);
        it is still part of the graph. Leases count as held until they
        expire. A hold handed to another thread to release still belongs to
        the thread that took it. A try (``timeout=0``) never raises: it
        answers 0. Waits of the async API (polling tries) are not part of
        the graph.
        """

    def try_acquire(self, key: Hashable, shared: bool) -> int:
        """``acquire(key, shared, 0, None)`` without re-checking arguments: the uncontended hot path.

        A token (> 0), or 0 when ``key`` is held or has waiters; never waits, never a TTL.
        """

    def release(self, key: Hashable, token: int) -> bool:
        """Compare-and-delete: free the holder ``token`` of ``key``; False when it is not a holder."""

    def renew(self, key: Hashable, token: int, ttl: float | None) -> bool:
        """Give holder ``token`` a new TTL from now; False when it is not a holder."""

    def disown(self, key: Hashable, token: int) -> bool:
        """Make holder ``token`` of ``key`` nobody's; False when it is not a holder.

        For a hold taken on behalf of someone else (``kannuki.testing``'s
        simulated holder, a hold another thread is to release): waiting for
        it is then an ordinary wait, never a DeadlockError.
        """

    def held(self, key: Hashable) -> bool: ...

    def holders(self, key: Hashable) -> list[tuple[int, bool, float | None]]:
        """``(token, shared, expires_at)`` for each current holder of ``key``."""

    def waiters(self, key: Hashable) -> int: ...

    def keys(self) -> list[Hashable]:
        """The keys held now."""

    def expire(self) -> int:
        """Evict holders whose TTL ran out (by the table's clock), hand off to waiters; return how many."""

    def clear(self) -> None:
        """Drop every holder and hand the keys to their waiters."""

    def reset_after_fork(self) -> None:
        """In a forked child: new internal mutex, no holders, no waiters."""

    def __len__(self) -> int: ...
