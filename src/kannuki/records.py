"""Locks that belong to a record: ``invoices/42/number_generation``.

``scoped_lock()`` is a class attribute (its name comes from the attribute);
``record_lock(record, name)`` makes the same object for an ad-hoc operation.
Works for SQLAlchemy models, Django models and plain objects::

    class Invoice(Base):
        __tablename__ = "invoices"
        number_generation = kannuki.scoped_lock(scope="company_id")

    invoice.number_generation.with_lock(assign_number, invoice)

The key is ``f"{namespace}/{value}/{name}"``. ``value`` is the ``scope``
attribute when one is given, else the primary key. ``namespace`` is the
class's ``__kannuki_namespace__``, else ``__tablename__`` (SQLAlchemy), else
``_meta.db_table`` (Django), else the class name in lower case.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from kannuki import _default
from kannuki._identity import namespace, primary_key_value, record_identity
from kannuki.options import DEFAULT, check_seconds

if TYPE_CHECKING:
    from kannuki._lock import Lock
    from kannuki._locker import Locker

__all__ = [
    "RecordLock",
    "ScopedLock",
    "namespace",
    "primary_key_value",
    "record_identity",
    "record_lock",
    "scoped_lock",
]

T = TypeVar("T")

# The options a record lock passes on to ``Locker.lock``.
LOCK_OPTIONS = frozenset({"timeout", "shared", "strategy", "ttl"})


class RecordLock:
    """The lock ``name`` of one record, with the locker's verbs.

    Made by a :func:`scoped_lock` attribute (``invoice.number_generation``) or
    by :func:`record_lock`. ``locker`` None means the module default locker,
    looked up at each use.
    """

    __slots__ = ("_locker", "_options", "key", "name", "record")

    def __init__(
        self, record: Any, name: str, key: str, locker: Locker | None, options: dict[str, Any]
    ) -> None:
        self.record = record
        self.name = name
        self.key = key
        self._locker = locker
        self._options = options

    def __repr__(self) -> str:
        return f"<kannuki.RecordLock {self.key!r}>"

    @property
    def locker(self) -> Locker:
        """The locker this record lock uses (the module default when none was given)."""
        if self._locker is not None:
            return self._locker
        return _default.get_locker()

    def lock(self, **options: Any) -> Lock:
        """A :class:`~kannuki.Lock` on this record's key; ``options`` override the attribute's (timeout, shared ...).

        With an AsyncLocker this is an AsyncLock (``async with record.<name>.lock():``).
        """
        _check_options(options)
        return self.locker.lock(self.key, **{**self._options, **options})

    def with_lock(
        self, fn: Callable[..., T], /, *args: Any, timeout: float | None = DEFAULT, **kwargs: Any
    ) -> T | Literal[False]:
        """Run ``fn(*args, **kwargs)`` holding the lock, waiting up to ``timeout``; its result, or False."""
        lock = self._sync_lock("with_lock", timeout)
        if not lock.acquire():
            return False
        try:
            return fn(*args, **kwargs)
        finally:
            lock.release()

    def try_lock(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T | Literal[False]:
        """Run ``fn`` only if the lock is free right now; its result, or False at once."""
        lock = self._sync_lock("try_lock", DEFAULT)
        if not lock.acquire(blocking=False):
            return False
        try:
            return fn(*args, **kwargs)
        finally:
            lock.release()

    def lock_or_raise(
        self, fn: Callable[..., T], /, *args: Any, timeout: float | None = DEFAULT, **kwargs: Any
    ) -> T:
        """Run ``fn`` holding the lock; LockNotAcquiredError when it cannot be had within ``timeout``."""
        with self._sync_lock("lock_or_raise", timeout):
            return fn(*args, **kwargs)

    def held(self) -> bool:
        """Is this record's lock held by anyone, anywhere?"""
        return self._sync_locker("held").held(self.key)

    def _sync_locker(self, verb: str) -> Locker:
        """The locker, which must be a sync one for the verbs (they call ``fn`` in this thread)."""
        locker = self.locker
        if inspect.iscoroutinefunction(getattr(type(locker), "held", None)):
            raise TypeError(
                f"RecordLock.{verb}() needs a kannuki.Locker, not an AsyncLocker; "
                f"with an AsyncLocker use `async with ....{self.name}.lock():`"
            )
        return locker

    def _sync_lock(self, verb: str, timeout: Any) -> Lock:
        options = {**self._options} if timeout is DEFAULT else {**self._options, "timeout": timeout}
        return self._sync_locker(verb).lock(self.key, **options)


class ScopedLock:
    """The class attribute made by :func:`scoped_lock`: ``record.<name>`` is that record's :class:`RecordLock`."""

    def __init__(self, scope: str | None, locker: Locker | None, options: dict[str, Any]) -> None:
        self.scope = scope
        self.locker = locker
        self.options = options
        self.name: str | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<kannuki.scoped_lock {self.name!r} scope={self.scope!r}>"

    def __get__(self, record: Any, owner: type | None = None) -> Any:
        if record is None:
            return self
        if self.name is None:
            raise TypeError("scoped_lock() must be assigned as a class attribute (it takes its name from it)")
        if self.scope is None:
            value = primary_key_value(record)
        else:
            value = getattr(record, self.scope)
            if value is None:
                raise ValueError(
                    f"{type(record).__qualname__}.{self.scope} is None (unsaved record?); "
                    f"the lock {self.name!r} needs a scope value"
                )
        return RecordLock(
            record, self.name, f"{namespace(type(record))}/{value}/{self.name}", self.locker, self.options
        )


def scoped_lock(
    scope: str | None = None,
    *,
    locker: Locker | None = None,
    timeout: float | None = None,
    shared: bool = False,
) -> Any:
    """A class attribute giving each record its own lock, keyed ``namespace/value/attribute_name``.

    ``scope`` names the attribute whose value scopes the lock (e.g.
    ``"company_id"``: one lock per company); None uses the record's primary
    key. ``timeout`` None means the locker's default.

    Example::

        class Invoice(Base):
            __tablename__ = "invoices"
            number_generation = kannuki.scoped_lock(scope="company_id")

        Invoice(id=7, company_id=42).number_generation.key  # "invoices/42/number_generation"

    Accessing it on a record whose scope or primary key is None raises ValueError naming the attribute.
    """
    if scope is not None and (not isinstance(scope, str) or not scope):
        raise TypeError(f"scope must be an attribute name (a non-empty str) or None, not {scope!r}")
    return ScopedLock(scope, locker, _lock_options(timeout, shared))


def record_lock(record: Any, name: str, *, locker: Locker | None = None, **options: Any) -> RecordLock:
    """An ad-hoc lock of ``record``: key ``f"{namespace}/{primary key}/{name}"``.

    ``options`` (``timeout``, ``shared``, ``strategy``, ``ttl``) become the
    defaults of the returned :class:`RecordLock`.

    Example::

        kannuki.record_lock(invoice, "custom_operation").with_lock(recalculate, invoice)

    Raises ValueError naming the primary key when it is None (an unsaved record),
    TypeError for a bad ``name`` or an unknown option.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, not {name!r}")
    _check_options(options)
    timeout, shared = options.pop("timeout", None), options.pop("shared", False)
    options.update(_lock_options(timeout, shared))  # timeout None: the locker's default
    key = f"{namespace(type(record))}/{primary_key_value(record)}/{name}"
    return RecordLock(record, name, key, locker, options)


def _lock_options(timeout: Any, shared: Any) -> dict[str, Any]:
    check_seconds(timeout, "timeout")
    if not isinstance(shared, bool):
        raise TypeError(f"shared must be True or False, not {shared!r}")
    options: dict[str, Any] = {}
    if timeout is not None:  # None: the locker's default_timeout
        options["timeout"] = timeout
    if shared:
        options["shared"] = True
    return options


def _check_options(options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - LOCK_OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown lock option {unknown[0]!r}; record locks take {', '.join(sorted(LOCK_OPTIONS))}"
        )
