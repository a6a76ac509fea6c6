"""Stub for the compiled core ``kannuki._native`` (built from ext/_native.pyx).

Same interface as ``kannuki._pure``; the contract is ``kannuki._coreapi``. The classes are
``cdef class`` types marked ``@cython.final``: not subclassable.
``scripts/gates`` runs stubtest to keep this file true to the built module.
"""

from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final, TypeVar, final

from typing_extensions import Self, disjoint_base

__all__ = [
    "MAX_NAME_BYTES",
    "Backoff",
    "Counters",
    "LockBase",
    "LockTable",
    "PlainPath",
    "SyncLockBase",
    "TokenSet",
    "full_name",
    "hash_text_extended",
    "lock_id",
    "name_and_id",
]

MAX_NAME_BYTES: Final[int]
_L = TypeVar("_L", bound=LockBase)

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

@final
class TokenSet:
    """A set of fencing tokens (ints > 0 that fit in 64 bits): one locker's plain holds in ``table``."""

    table: Any
    def __init__(self, table: Any = None) -> None: ...
    def add(self, token: int) -> None:
        """Record ``token`` (an int > 0)."""
    def remove(self, token: int) -> None:
        """Forget ``token``; KeyError when it is not recorded."""
    def discard(self, token: int) -> None:
        """Forget ``token`` if it is recorded."""
    def clear(self) -> None:
        """Forget every token."""
    def __contains__(self, key: object, /) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[int]: ...

@final
class PlainPath:
    """One locker's way to its plain holds: the table they go to, the token set that records them."""

    keeper: Any
    stats: Counters
    instrumented: bool
    generation: int
    def __init__(
        self,
        keeper: Any = None,
        stats: Counters | None = None,
        instrumented: bool = True,
        generation: int = 0,
        log_levels: dict[int, bool] | None = None,
    ) -> None: ...
    @property
    def table(self) -> LockTable | None:
        """The table plain holds go to now, or None (no plain path)."""
    @property
    def tokens(self) -> TokenSet | None:
        """The set recording the tokens held in ``table``, or None."""
    def use(self, table: LockTable | None, tokens: TokenSet | None) -> None:
        """Send plain holds to ``table``, recorded in ``tokens`` (None, None: no plain path)."""
    def set_defaults(self, prefix: str | None, default_timeout: Any, strategy: Any, unset: Any) -> None:
        """The locker's key prefix, default timeout and strategy for make(); ``unset`` stands for "no timeout given"."""
    def make(
        self,
        cls: type[_L],
        locker: Any,
        key: Any,
        timeout: Any,
        shared: Any,
        strategy: Any,
        ttl: Any,
        transaction: Any,
        on_lost: Any,
        cancel_on_lost: Any,
    ) -> _L | None:
        """A new ``cls`` (a LockBase subclass) on ``key`` with the locker's defaults; None when an option was given."""

@disjoint_base
class LockBase:
    """The state of a Lock, and its plain fast path (the base of ``AsyncLock``; ``Lock`` has ``SyncLockBase``)."""

    locker: Any
    key: str
    name: str
    lock_id: int
    timeout: float | None
    shared: bool
    strategy: str
    ttl: float | None
    transaction: Any
    on_lost: Any
    cancel_on_lost: bool
    _hold: Any
    _busy: bool
    @property
    def _plain_set(self) -> TokenSet:
        """The keeper's record of the plain hold (None until the first one: read it only while ``_plain``)."""
    _since: float
    _generation: int
    _spent: bool
    _scope: Any
    def __init__(
        self,
        path: PlainPath | None = None,
        locker: Any = None,
        key: Any = None,
        name: Any = None,
        lock_id: Any = None,
        timeout: float | None = None,
        shared: bool = False,
        strategy: Any = None,
        ttl: float | None = None,
        transaction: Any = None,
        on_lost: Any = None,
        cancel_on_lost: bool = False,
    ) -> None: ...
    @property
    def _plain(self) -> int:
        """The token of the current plain hold, 0 when none (only 0 may be set: forget it)."""
    @_plain.setter
    def _plain(self, value: int) -> None: ...
    def _try_plain(self) -> bool:
        """Take the lock as a plain hold if it is one and its key is free now; True when taken."""
    def _release_plain(self) -> bool:
        """Release the current plain hold; True when released, False (nothing changed) when there is none."""

class SyncLockBase(LockBase):
    """``LockBase`` with the sync Lock's verbs: the plain path in C, the rest in the subclass."""

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock; True when acquired."""
    def release(self) -> None:
        """Release the lock."""
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None: ...
