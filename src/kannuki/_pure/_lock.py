"""The plain Lock's state and fast path (pure twin of ``kannuki._native.LockBase`` and its kin).

A plain hold is one on an in-process table with nothing else to keep (no
lease, no transaction). Its uncontended acquire and release are the table's
try, the keeper's token set and the stats; the API layer's Lock subclasses do
everything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

from kannuki import events as _events
from kannuki._pure._counters import Counters
from kannuki._pure._hashing import name_and_id
from kannuki._pure._table import LockTable

__all__ = ["LockBase", "PlainPath", "SyncLockBase", "TokenSet"]

_DEBUG_LEVEL = 10  # logging.DEBUG
_NAMES_KEPT = 1024  # keys whose name and ID one locker remembers (then it starts over)
_L = TypeVar("_L", bound="LockBase")


class TokenSet(set):  # type: ignore[type-arg]  # a set of ints; generic subclassing needs 3.9+ runtime
    """A set of fencing tokens (ints > 0 that fit in 64 bits): one locker's plain holds in ``table``.

    The keeper's record of what it holds there, for ``close()``, the GC and
    ``lock.lost``. A set of ints, with the table riding along.
    """

    __slots__ = ("table",)

    def __init__(self, table: Any = None) -> None:
        super().__init__()
        self.table = table

    def add(self, token: int) -> None:
        """Record ``token`` (an int > 0)."""
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"token must be an int, not {type(token).__name__}")
        if not 0 < token < 1 << 64:
            raise ValueError(f"token must be an int in 1..2**64-1, got {token!r}")
        super().add(token)

    def __iter__(self) -> Iterator[int]:
        return iter(sorted(set.__iter__(self)))

    def __repr__(self) -> str:
        return f"TokenSet({sorted(self)!r})"


class PlainPath:
    """One locker's way to its plain holds: the table they go to, the token set that records them.

    ``keeper`` (the hold owner) is told of each plain acquisition and release
    only when someone listens: ``instrumented`` and an event subscriber, or
    ``log_levels`` (the ``kannuki`` logger's per-level cache) not saying that
    DEBUG is off. ``generation`` is the fork generation the holds belong to;
    the keeper moves it on in a forked child.
    """

    __slots__ = (
        "_default_timeout",
        "_log_levels",
        "_names",
        "_prefix",
        "_strategy",
        "_table",
        "_tokens",
        "_unset",
        "generation",
        "instrumented",
        "keeper",
        "stats",
    )

    def __init__(
        self,
        keeper: Any = None,
        stats: Counters | None = None,
        instrumented: bool = True,
        generation: int = 0,
        log_levels: dict[int, bool] | None = None,
    ) -> None:
        self.keeper = keeper
        self.stats = Counters() if stats is None else stats
        self.instrumented = bool(instrumented)
        self.generation = generation
        self._log_levels = {} if log_levels is None else log_levels
        self._table: LockTable | None = None
        self._tokens: TokenSet | None = None
        # What make() needs: the locker's defaults, and the full name and lock ID of recent keys.
        self._prefix: str | None = None
        self._default_timeout: Any = None
        self._strategy: Any = "blocking"
        self._unset: Any = self  # nothing the caller passes: every timeout counts as given
        self._names: dict[str, tuple[str, int]] = {}

    def set_defaults(self, prefix: str | None, default_timeout: Any, strategy: Any, unset: Any) -> None:
        """The locker's key prefix, default timeout and strategy for make(); ``unset`` stands for "no timeout given"."""
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str or None, not {type(prefix).__name__}")
        self._prefix = prefix
        self._default_timeout = default_timeout
        self._strategy = strategy
        self._unset = unset
        self._names = {}

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
        """A new ``cls`` (a LockBase subclass) on ``key`` with the locker's defaults; None when an option was given.

        The fast way of ``locker.lock(key)``: the key is validated and hashed
        once per distinct key (recent ones are remembered), and no argument
        parsing is done. ``cls`` must be a subclass of LockBase.
        """
        if not (
            timeout is self._unset
            and shared is False
            and strategy is None
            and ttl is None
            and transaction is None
            and on_lost is None
            and cancel_on_lost is False
        ):
            return None
        if not (isinstance(cls, type) and issubclass(cls, LockBase)):
            raise TypeError(f"cls must be a subclass of LockBase, not {cls!r}")
        exact = type(key) is str
        found = self._names.get(key) if exact else None
        if found is None:
            found = name_and_id(key, self._prefix)
            if exact:
                if len(self._names) >= _NAMES_KEPT:
                    self._names.clear()
                self._names[key] = found
        name, lock_id = found
        return cls(self, locker, key, name, lock_id, self._default_timeout, False, self._strategy)

    @property
    def table(self) -> LockTable | None:
        """The table plain holds go to now, or None (no plain path)."""
        return self._table

    @property
    def tokens(self) -> TokenSet | None:
        """The set recording the tokens held in ``table``, or None."""
        return self._tokens

    def use(self, table: LockTable | None, tokens: TokenSet | None) -> None:
        """Send plain holds to ``table``, recorded in ``tokens`` (None, None: no plain path)."""
        if (
            (table is None) != (tokens is None)
            or not (table is None or isinstance(table, LockTable))
            or not (tokens is None or isinstance(tokens, TokenSet))
        ):
            raise TypeError("use() takes a LockTable and its TokenSet, or None and None")
        self._table = table
        self._tokens = tokens

    def _listening(self) -> bool:
        if self.instrumented and _events.SUBSCRIBERS:
            return True
        return self._log_levels.get(_DEBUG_LEVEL) is not False


class LockBase:
    """The state of a Lock, and its plain fast path (the base of ``AsyncLock``; ``Lock`` has ``SyncLockBase``).

    The subclass provides ``_abandon()`` (called when a Lock that holds is
    garbage-collected); everything but the plain path is its business.
    """

    __slots__ = (
        "__weakref__",
        "_busy",
        "_generation",
        "_hold",
        "_path",
        "_plain",
        "_plain_set",
        "_scope",
        "_since",
        "_spent",
        "_table",
        "cancel_on_lost",
        "key",
        "lock_id",
        "locker",
        "name",
        "on_lost",
        "shared",
        "strategy",
        "timeout",
        "transaction",
        "ttl",
    )

    def __init__(
        self,
        path: PlainPath | None = None,
        locker: Any = None,
        key: Any = None,
        name: Any = None,
        lock_id: Any = None,
        timeout: Any = None,
        shared: bool = False,
        strategy: Any = None,
        ttl: Any = None,
        transaction: Any = None,
        on_lost: Any = None,
        cancel_on_lost: bool = False,
    ) -> None:
        if path is not None and not isinstance(path, PlainPath):
            raise TypeError(f"path must be a PlainPath or None, not {type(path).__name__}")
        # ``path`` None: a path to no table, so every acquire takes the subclass's general way.
        self._path = PlainPath() if path is None else path
        self.locker = locker
        self.key = key
        self.name = name  # the full name: prefix and key
        self.lock_id = lock_id
        self.timeout = timeout
        self.shared = bool(shared)
        self.strategy = strategy
        self.ttl = ttl
        self.transaction = transaction
        self.on_lost = on_lost
        self.cancel_on_lost = bool(cancel_on_lost)
        self._hold: Any = None
        self._plain: int = 0  # the token of a plain hold, 0 when none
        self._busy = False
        self._plain_set: Any = None
        self._since = 0.0
        self._generation = 0
        self._spent = False
        self._scope: Any = None  # the async cancel_on_lost scope of the running block
        self._table: LockTable | None = None

    def __del__(self) -> None:
        if self._plain or self._hold is not None:
            try:
                self._abandon()  # type: ignore[attr-defined]  # the subclass's
            except Exception:  # at interpreter exit the modules may be half gone
                pass

    def _try_plain(self) -> bool:
        """Take the lock as a plain hold if it is one and its key is free now; True when taken.

        False (nothing changed) when this Lock holds or held something, is busy
        acquiring, is not plain (a lease, a transaction), its locker has no
        plain path, or the key is held or queued for.
        """
        path = self._path
        table = path._table
        if (
            table is None
            or self._plain
            or self._hold is not None
            or self._busy
            or self.ttl is not None
            or self.transaction is not None
        ):
            return False
        token = table.try_acquire(self.name, self.shared)
        if not token:
            return False
        tokens = path._tokens
        assert tokens is not None  # set with the table
        try:
            tokens.add(token)  # from here on the keeper owns it
        except BaseException:
            table.release(self.name, token)
            raise
        self._plain_set = tokens
        self._table = table
        self._since = path.stats.acquired()
        self._generation = path.generation
        self._spent = False
        self._plain = token
        if path._listening():
            path.keeper.plain_acquired(self, token)
        return True

    def _release_plain(self) -> bool:
        """Release the current plain hold; True when released, False (nothing changed) when there is none.

        A plain hold that is gone (``Locker.close()``, a cleared table) raises
        the keeper's LockLostError, and reports the loss once.
        """
        path = self._path
        token = self._plain
        if not token or self._generation != path.generation or self._spent:
            return False
        try:
            self._plain_set.remove(token)
            recorded = True
        except KeyError:  # close() released it
            recorded = False
        table = self._table
        assert table is not None  # set with the token
        if recorded and table.release(self.name, token):
            self._plain = 0
            held_for = path.stats.released(self._since)
            if path._listening():
                path.keeper.plain_released(self, token, held_for)
            return True
        self._spent = True  # keep the token: ``lock.lost`` stays True until the next acquire
        raise path.keeper.plain_not_released(self, token, self._since, recorded)


class SyncLockBase(LockBase):
    """``LockBase`` with the sync Lock's verbs: the plain path first, the rest in the subclass.

    The subclass provides ``_acquire(blocking, timeout)`` (every acquire the
    plain path does not take), ``_release_hold()`` (every release that is not
    of a plain hold) and ``_enter()`` (``with``, when the plain path did not take it).
    """

    __slots__ = ()

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Acquire the lock; True when acquired.

        ``blocking=False`` tries once. Otherwise the lock's strategy applies,
        waiting up to ``timeout`` seconds (None: the timeout this lock was
        made with, which may itself be None for "forever").

        Raises AlreadyHeldError if this object already holds the lock,
        ValueError for a bad timeout, BackendError when the store fails.
        """
        if timeout is None and self._try_plain():
            return True
        acquired: bool = self._acquire(blocking, timeout)  # type: ignore[attr-defined]  # the subclass's
        return acquired

    def release(self) -> None:
        """Release the lock.

        Raises NotHeldError when this object does not hold it, LockLostError
        when the store lost it while it was held (the lock is gone either way).
        """
        if not self._release_plain():
            self._release_hold()  # type: ignore[attr-defined]  # the subclass's

    def __enter__(self) -> Any:
        if self._try_plain():
            return self
        return self._enter()  # type: ignore[attr-defined]  # the subclass's

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if not self._release_plain():
            self._release_hold()  # type: ignore[attr-defined]  # the subclass's
