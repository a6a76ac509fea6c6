"""The exceptions kannuki raises, all under :class:`KannukiError`.

This module imports nothing from kannuki, so every layer (core, backends, API)
may raise these. Each error that a user would also catch as a standard library
error derives from it too (``LockNotAcquiredError`` is a ``TimeoutError``).
Every error pickles with its message and attributes, so it survives a trip
through multiprocessing or a task queue.
"""

from __future__ import annotations

from typing import Any

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

    ``key`` is the lock key the error is about, when there is one.
    """

    def __init__(self, message: str, *, key: Any = None, **details: Any) -> None:
        super().__init__(message)
        self.key = key
        for name, value in details.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as cls(*args); keyword attributes travel as state.
        return (self.__class__, self.args, self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
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
    """The server detected a deadlock (PostgreSQL SQLSTATE 40P01) and cancelled this wait."""


class CircuitOpenError(BackendError):
    """The locker's circuit breaker is open after repeated backend failures; retry after ``retry_after`` seconds."""


class NotSupportedError(KannukiError):
    """The backend lacks the requested feature (e.g. shared locks on MySQL)."""
