"""kannuki: advisory locks for Python services.

One blocking / try / raise lock API over PostgreSQL, MySQL/MariaDB, an
in-process lock table, and sqlite, file and Redis lease stores::

    import kannuki

    locker = kannuki.Locker("postgresql://app@db/app")
    with locker.lock("invoices/42", timeout=5):
        ...

Importing kannuki has no side effects: no threads, no connections, and only
a ``NullHandler`` on the ``kannuki`` logger.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kannuki._core import MAX_NAME_BYTES, NATIVE, lock_id
from kannuki._lock import Lock, MultiLock
from kannuki._locker import Locker
from kannuki.backends._types import Grant, Holder
from kannuki.circuit import CircuitState
from kannuki.errors import (
    AlreadyHeldError,
    BackendError,
    CircuitOpenError,
    ConfigurationError,
    DeadlockError,
    KannukiError,
    LockLostError,
    LockNotAcquiredError,
    NotHeldError,
    NotSupportedError,
)
from kannuki.events import LockerStats, LockEvent, subscribe
from kannuki.locker import configure, get_locker, held, lock, lock_or_raise, try_lock, with_lock

if TYPE_CHECKING:  # the lazily loaded names, typed for users' type checkers
    from kannuki import testing as testing
    from kannuki._lock_async import AsyncLock as AsyncLock
    from kannuki._lock_async import AsyncMultiLock as AsyncMultiLock
    from kannuki._locker_async import AsyncLocker as AsyncLocker
    from kannuki.decorators import locked as locked
    from kannuki.decorators import unique as unique
    from kannuki.records import RecordLock as RecordLock
    from kannuki.records import record_lock as record_lock
    from kannuki.records import scoped_lock as scoped_lock

__version__ = "0.1.0"

logging.getLogger("kannuki").addHandler(logging.NullHandler())

# Loaded on first use (asyncio, the integrations), so `import kannuki` stays small and quick.
_LAZY = {
    "AsyncLock": ("kannuki._lock_async", "AsyncLock"),
    "AsyncLocker": ("kannuki._locker_async", "AsyncLocker"),
    "AsyncMultiLock": ("kannuki._lock_async", "AsyncMultiLock"),
    "RecordLock": ("kannuki.records", "RecordLock"),
    "locked": ("kannuki.decorators", "locked"),
    "record_lock": ("kannuki.records", "record_lock"),
    "scoped_lock": ("kannuki.records", "scoped_lock"),
    "unique": ("kannuki.decorators", "unique"),
    "testing": ("kannuki.testing", ""),
}


def __getattr__(name: str) -> Any:
    import importlib

    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'kannuki' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value
    return value


__all__ = [
    "MAX_NAME_BYTES",
    "NATIVE",
    "AlreadyHeldError",
    "AsyncLock",
    "AsyncLocker",
    "AsyncMultiLock",
    "BackendError",
    "CircuitOpenError",
    "CircuitState",
    "ConfigurationError",
    "DeadlockError",
    "Grant",
    "Holder",
    "KannukiError",
    "Lock",
    "LockEvent",
    "LockLostError",
    "LockNotAcquiredError",
    "Locker",
    "LockerStats",
    "MultiLock",
    "NotHeldError",
    "NotSupportedError",
    "RecordLock",
    "configure",
    "get_locker",
    "held",
    "lock",
    "lock_id",
    "lock_or_raise",
    "locked",
    "record_lock",
    "scoped_lock",
    "subscribe",
    "testing",
    "try_lock",
    "unique",
    "with_lock",
]
