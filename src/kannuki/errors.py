"""The exceptions kannuki raises, all under :class:`KannukiError`.

This module imports nothing from kannuki at run time, so every layer (core,
backends, API) may raise these. Each error that a user would also catch as a
standard library error derives from it too (``LockNotAcquiredError`` is a
``TimeoutError``). Every error pickles with its message and attributes, so it
survives a trip through multiprocessing or a task queue.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kannuki.backends._types import Holder

__all__ = [
    "AlreadyHeldError",
    "BackendError",
    "CircuitOpenError",
    "ConfigurationError",
    "DeadlockError",
    "KannukiError",
    "LockLostError",
    "LockNotAcquiredError",
    "NotHeldError",
    "NotSupportedError",
]


class KannukiError(Exception):
    """Base class of every error kannuki raises on purpose.

    Every kannuki error carries these attributes (None or empty when they do not apply):

    ``key``
        The lock key the error is about (for a ``lock_many`` call, the first of its keys).
    ``keys``
        Every key the error is about, in the order given: ``(key,)`` for one lock, all
        the keys of a ``lock_many`` call, ``()`` when the error is about no key.
    ``holder``
        Who holds the lock, when the backend can tell (:class:`kannuki.Holder`).
    ``retry_after``
        Seconds until trying again makes sense (:class:`CircuitOpenError`).

    Example::

        try:
            with locker.lock("invoices/42", timeout=5):
                ...
        except kannuki.LockNotAcquiredError as exc:
            print(f"{exc.key} is held by {exc.holder.describe() if exc.holder else 'someone'}")
    """

    key: str | None
    keys: tuple[str, ...]
    holder: Holder | None
    retry_after: float | None

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        keys: Iterable[str] = (),
        holder: Holder | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        many = (keys,) if isinstance(keys, str) else tuple(keys)
        if key is not None and not isinstance(key, str):
            # Tolerated at run time: a multi-lock's list of keys given as ``key``.
            many = many or tuple(key)
            key = None
        if key is None and many:
            key = many[0]
        self.key = key
        self.keys = many or ((key,) if key is not None else ())
        self.holder = holder
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as cls(*args); the keyword attributes travel as state.
        return (self.__class__, self.args, self.__dict__)

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        if state:
            self.__dict__.update(state)


class ConfigurationError(KannukiError, ValueError):
    """A bad URL or option given to a ``Locker`` or ``kannuki.configure``."""


class LockNotAcquiredError(KannukiError, TimeoutError):
    """The lock was not acquired: it is held elsewhere and the wait ran out.

    ``holder`` describes who holds it, when the backend can tell.
    """


class AlreadyHeldError(KannukiError, RuntimeError):
    """``acquire()`` on a Lock object that already holds its lock (locks are not reentrant)."""


class NotHeldError(KannukiError, RuntimeError):
    """``release()`` on a Lock object that does not hold its lock."""


class LockLostError(KannukiError):
    """The backend lost a lock while it was held (connection dropped, lease expired)."""


class BackendError(KannukiError):
    """The driver or server failed; the original exception is ``__cause__``."""


class DeadlockError(BackendError):
    """A wait that can never end: the server's deadlock report (PostgreSQL 40P01), or one found in-process."""


class CircuitOpenError(BackendError):
    """The locker's circuit breaker is open after repeated backend failures; retry after ``retry_after`` seconds."""


class NotSupportedError(KannukiError):
    """The backend lacks the requested feature (e.g. shared locks on MySQL)."""
