"""The asyncio API: ``AsyncLocker``, ``AsyncLock``, ``AsyncMultiLock``.

These are the async sources themselves (:mod:`kannuki._locker_async`,
:mod:`kannuki._lock_async`); the sync API is generated from them, so the two
keep the same options, verbs, events, stats, renewal and loss handling.
"""

from __future__ import annotations

from kannuki._lock_async import AsyncLock, AsyncMultiLock
from kannuki._locker_async import AsyncLocker

__all__ = ["AsyncLock", "AsyncLocker", "AsyncMultiLock"]
