"""Stub for the compiled core ``kannuki._native`` (built from ext/_native.pyx).

Same interface as ``kannuki._pure``; the contract is ``kannuki._coreapi``. The classes are
``cdef class`` types marked ``@cython.final``: not subclassable.
``scripts/gates`` runs stubtest to keep this file true to the built module.
"""

from collections.abc import Callable, Hashable
from typing import Final, final

__all__ = [
    "MAX_NAME_BYTES",
    "Backoff",
    "Counters",
    "LockTable",
    "full_name",
    "hash_text_extended",
    "lock_id",
    "name_and_id",
]

MAX_NAME_BYTES: Final[int]

def hash_text_extended(data: bytes | bytearray | memoryview, seed: int = 0) -> int:
    """PostgreSQL's ``hashtextextended`` over ``data`` with ``seed``, as a signed 64-bit int."""

def full_name(key: str, prefix: str | None = None) -> str:
    """Validate ``key`` / ``prefix`` and return ``f"{prefix}:{key}"`` (``key`` with no prefix)."""

def lock_id(key: str, prefix: str | None = None) -> int:
    """The signed 64-bit lock ID of ``key``: ``hashtextextended(full_name, 0)``."""

def name_and_id(key: str, prefix: str | None = None) -> tuple[str, int]:
    """``(full_name(key, prefix), lock_id(key, prefix))``, validating once."""

@final
class Backoff:
    """A delay schedule for retries: ``next_delay()`` gives the wait before each attempt."""

    attempt: int
    @property
    def kind(self) -> str: ...
    @property
    def jitter(self) -> str: ...
    @property
    def interval(self) -> float: ...
    @property
    def cap(self) -> float: ...
    def __init__(
        self,
        kind: str = "exponential",
        interval: float = 0.05,
        cap: float = 2.0,
        jitter: str = "full",
        seed: int | None = None,
    ) -> None: ...
    def next_delay(self, remaining: float | None = None) -> float:
        """The delay before the next attempt, never above ``cap`` nor ``remaining``; counts the attempt."""
    def reset(self) -> None:
        """Start the schedule over (attempt 0); the random stream goes on."""

@final
class LockTable:
    """An in-process table of keys -> holders with fencing tokens."""

    # The compiled class takes its argument in __cinit__ (object's __init__ is inherited).
    def __new__(cls, clock: Callable[[], float] | None = None) -> LockTable: ...
    def acquire(
        self,
        key: Hashable,
        shared: bool = False,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> int:
        """Take ``key``; return a fencing token (> 0), or 0 when not acquired in ``timeout``.

        A wait without a timeout for a key this thread holds, or any wait that closes a
        wait-for cycle among threads of this process, raises ``kannuki.errors.DeadlockError``
        at once; a try (``timeout=0``) answers 0. See ``kannuki._coreapi.LockTableProtocol``.
        """
    def try_acquire(self, key: Hashable, shared: bool) -> int:
        """``acquire(key, shared, 0, None)`` without re-checking arguments: one try, no TTL."""
    def release(self, key: Hashable, token: int) -> bool:
        """Compare-and-delete: free the holder ``token`` of ``key``; False when it is not a holder."""
    def renew(self, key: Hashable, token: int, ttl: float | None) -> bool:
        """Give holder ``token`` a new TTL from now (None: no TTL); False when it is not a holder."""
    def disown(self, key: Hashable, token: int) -> bool:
        """Make holder ``token`` of ``key`` nobody's; False when it is not a holder."""
    def held(self, key: Hashable) -> bool: ...
    def holders(self, key: Hashable) -> list[tuple[int, bool, float | None]]: ...
    def waiters(self, key: Hashable) -> int: ...
    def keys(self) -> list[Hashable]: ...
    def expire(self) -> int: ...
    def clear(self) -> None: ...
    def reset_after_fork(self) -> None: ...
    def __len__(self) -> int: ...

@final
class Counters:
    """A locker's stats counters; the increments need no lock (no bytecode runs inside)."""

    def acquired(self) -> float:
        """Count one acquisition; return ``time.monotonic()``."""
    def released(self, since: float) -> float:
        """Count one release of a hold begun at ``since``; return the seconds held."""
    def add(self, name: str) -> None:
        """Count one of: failed, timeouts, lost, renewed, renew_failed."""
    def snapshot(self) -> tuple[int, int, int, int, int, int, int, float]:
        """``(acquired, failed, timeouts, released, lost, renewed, renew_failed, hold_time)``."""
