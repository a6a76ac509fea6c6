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
from typing import Any as _Any

from kannuki._core import MAX_NAME_BYTES, NATIVE, lock_id
from kannuki.backends.base import Holder
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
from kannuki.lock import Lock, MultiLock
from kannuki.locker import (
    Locker,
    configure,
    get_locker,
    held,
    lock,
    lock_or_raise,
    try_lock,
    with_lock,
)

logging.getLogger("kannuki").addHandler(logging.NullHandler())

# Loaded on first use (asyncio and friends), so `import kannuki` stays small and quick.
_LAZY = {
    "AsyncLock": "kannuki.aio",
    "AsyncLocker": "kannuki.aio",
    "AsyncMultiLock": "kannuki.aio",
    "RecordLock": "kannuki.records",
    "locked": "kannuki.decorators",
    "record_lock": "kannuki.records",
    "scoped_lock": "kannuki.records",
    "unique": "kannuki.decorators",
}


def __getattr__(name: str) -> _Any:
    import importlib

    if name == "testing":
        return importlib.import_module("kannuki.testing")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kannuki' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__version__ = "0.1.0"

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
