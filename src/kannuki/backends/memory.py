"""``memory://``: the in-process lock table as a backend.

``memory://`` is one table per process; ``memory://NAME`` is a separate named
table, shared by every locker that names it. Locks exclude threads of this
process only. Optional ``ttl`` (seconds) makes every acquisition a lease that
expires unless renewed.
"""

from __future__ import annotations

import os
from typing import Any, Callable
from urllib.parse import urlsplit

from kannuki._core import LockTable
from kannuki.backends._tables import process_table
from kannuki.backends.base import NO_WAIT_CALLBACK, Backend, Holder, reject_unknown_options
from kannuki.errors import ConfigurationError, LockLostError

__all__ = ["MemoryBackend", "shared_table"]


def shared_table(name: str = "") -> LockTable:
    """The process-wide table called ``name`` (created on first use; emptied in a forked child)."""
    return process_table(("memory", name))


class MemoryBackend(Backend):
    """Locks in an in-process :class:`LockTable`; keyed by the full lock name."""

    scheme = "memory"
    supports_shared = True
    supports_ttl = True

    def __init__(self, table: LockTable | None = None, *, ttl: float | None = None, name: str = "") -> None:
        self.table = table if table is not None else shared_table(name)
        self.name = name
        self.ttl = ttl
        # Bound once: the uncontended path is two C calls and nothing else.
        self._try = self.table.acquire
        self._release = self.table.release

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "MemoryBackend":
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query:
            raise ConfigurationError(f"memory URLs take only a table name (memory://NAME), not {url!r}")
        ttl = options.pop("ttl", None)
        reject_unknown_options("memory", options)
        if ttl is not None and not (isinstance(ttl, (int, float)) and 0 < ttl < float("inf")):
            raise ConfigurationError(f"ttl must be a positive number of seconds or None, not {ttl!r}")
        return cls(ttl=ttl, name=parts.netloc)

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
    ) -> int:
        if transaction is not None:
            from kannuki.errors import NotSupportedError

            raise NotSupportedError("the memory backend has no transactions; drop transaction=")
        ttl = self.ttl if ttl is None else ttl
        token: int = self._try(name, shared, 0.0, ttl)
        if token or timeout == 0:
            return token
        on_wait()
        return self._try(name, shared, timeout, ttl)  # type: ignore[no-any-return]

    def release(self, name: str, lock_id: int, token: int) -> None:
        if not self._release(name, token):
            raise LockLostError(
                f"the lock {name!r} was lost before release (its lease expired or the table was cleared)",
                key=name,
            )

    def fast_path(self) -> LockTable | None:
        # The table's try_acquire / release, unless every acquisition here is a lease.
        return self.table if self.ttl is None else None

    def renew(self, name: str, lock_id: int, token: int, ttl: float | None = None) -> bool:
        return bool(self.table.renew(name, token, self.ttl if ttl is None else ttl))

    def held(self, name: str, lock_id: int) -> bool:
        return bool(self.table.held(name))

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        pid = os.getpid()
        return [
            Holder(name=name, lock_id=lock_id, shared=shared, token=token, pid=pid)
            for token, shared, _expires in self.table.holders(name)
        ]

    def list_held(self) -> list[Holder]:
        from kannuki._core import lock_id as compute_id

        out = []
        for key in self.table.keys():
            out.extend(self.holders(key, compute_id(key)))
        return out

    def describe(self) -> str:
        return f"memory://{self.name}"
