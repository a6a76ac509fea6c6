# WARNING: generated from src/kannuki/backends/memory_async.py by tools/async_to_sync.py.
# Do not edit: change the async source and run `python tools/async_to_sync.py`.
"""``memory://``: the in-process lock table as a store (async source; ``memory.py`` is generated).

``memory://`` is one table per process; ``memory://NAME`` is a separate named
table, shared by every locker that names it, sync and async alike: two
lockers of ``memory://x``, whichever API each uses, exclude each other. Locks exclude threads and tasks of this process only. Optional ``ttl``
(seconds) makes every acquisition a lease that the hold owner renews.

Sync waiters wait inside the table (GIL released, FIFO, Ctrl-C safe); async
waiters line up on the event loop and the first of them polls the table
(``kannuki._compat.table_acquire``), so the loop is never blocked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from kannuki._compat import table_acquire, table_release
from kannuki._core import LockTable
from kannuki._core import lock_id as compute_lock_id
from kannuki.backends._tables import process_table
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, reject_unknown_options
from kannuki.backends.base import Backend
from kannuki.errors import ConfigurationError, LockLostError, NotSupportedError

__all__ = ["MemoryBackend", "shared_table"]


def shared_table(name: str = "") -> LockTable:
    """The process-wide table called ``name`` (created on first use; emptied in a forked child)."""
    return process_table(("memory", name))


class MemoryBackend(Backend):
    """Locks in an in-process :class:`LockTable`, keyed by the full lock name."""

    scheme = "memory"
    supports_shared = True
    supports_ttl = True

    def __init__(self, table: LockTable | None = None, *, ttl: float | None = None, name: str = "") -> None:
        self.table = table if table is not None else shared_table(name)
        self.name = name
        self.ttl = ttl

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBackend:
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query:
            raise ConfigurationError(f"memory URLs take only a table name (memory://NAME), not {url!r}")
        ttl = options.pop("ttl", None)
        reject_unknown_options("memory", options)
        if ttl is not None and not (isinstance(ttl, (int, float)) and 0 < ttl < float("inf")):
            raise ConfigurationError(f"ttl must be a positive number of seconds or None, not {ttl!r}")
        return cls(ttl=ttl, name=parts.netloc)

    def fast_path(self) -> LockTable | None:
        # The table's try_acquire / release, unless every acquisition here is a lease.
        return self.table if self.ttl is None else None

    def acquire(
        self,
        name: str,
        lock_id: int,
        *,
        shared: bool = False,
        timeout: float | None = None,
        ttl: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
        transaction: Any = None,
    ) -> Grant | None:
        if transaction is not None:
            raise NotSupportedError("the memory backend has no transactions; drop transaction=")
        ttl = self.ttl if ttl is None else ttl
        token: int = self.table.acquire(name, shared, 0.0, ttl)
        if not token and timeout != 0:
            on_wait()
            token = table_acquire(self.table, name, shared, timeout, ttl)
        return Grant(name, lock_id, shared, token, ttl) if token else None

    def release(self, grant: Grant) -> None:
        if not table_release(self.table, grant.name, grant.token):
            raise LockLostError(
                f"the lock {grant.name!r} was lost before release (its lease expired or the table was cleared)",
                key=grant.name,
            )

    def renew(self, grant: Grant, ttl: float | None = None) -> bool:
        return bool(self.table.renew(grant.name, grant.token, grant.ttl if ttl is None else ttl))

    def check(self, grant: Grant) -> bool:
        return any(token == grant.token for token, _shared, _expires in self.table.holders(grant.name))

    def held(self, name: str, lock_id: int) -> bool:
        return bool(self.table.held(name))

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        pid = os.getpid()
        return [
            Holder(name=name, lock_id=lock_id, shared=shared, token=token, pid=pid)
            for token, shared, _expires in self.table.holders(name)
        ]

    def list_held(self) -> list[Holder]:
        out = []
        for key in self.table.keys():
            name = str(key)  # this store keys its table by full lock names
            out.extend(self.holders(name, compute_lock_id(name)))
        return out

    def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        freed = 0
        for token, _shared, _expires in self.table.holders(name):
            freed += bool(table_release(self.table, name, token))
        return freed

    def hand_off(self, grant: Grant) -> bool:
        # The table files a hold under the thread that took it; a handed-off one is nobody's.
        self.table.disown(grant.name, grant.token)
        return True

    def describe(self) -> str:
        return f"memory://{self.name}"
