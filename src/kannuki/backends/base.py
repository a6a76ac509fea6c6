# WARNING: generated from src/kannuki/backends/base_async.py by tools/async_to_sync.py.
# Do not edit: change the async source and run `python tools/async_to_sync.py`.
"""The one interface every store implements (async source; ``base.py`` is generated from it).

A backend is handed the validated full name and 64-bit ID of a lock and
answers with a :class:`~kannuki.backends._types.Grant`, or None for "not
acquired". The hold owner keeps the grant and gives it back to ``release``,
``renew``, ``check`` and ``abort``: a backend keeps no map of its own holds.

Rules every store keeps:

- ``acquire`` leaves nothing held when it raises or returns None, including
  when it is interrupted (asyncio cancellation; KeyboardInterrupt in sync
  code): undo on the way out, or close the connection that would hold it.
- ``release`` is compare-and-delete: it frees only the holder the grant names,
  and raises LockLostError when that holder was already gone. A connection
  goes back to a pool only after its lock is released.
- ``abort`` is what the owner calls when a release was interrupted or a hold
  was lost: make sure the store holds nothing for the grant by the bluntest
  means (close the pinned connection), and never raise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from kannuki.backends._types import NO_WAIT_CALLBACK, FastPath, Grant, Holder, LockRequest, StoreTraits
from kannuki.errors import NotSupportedError

__all__ = ["Backend"]


class Backend(StoreTraits):
    """Base class of the stores. Subclasses override what they support (see ``StoreTraits``)."""

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Backend:
        """Build from a URL of this backend's scheme; unknown options raise ConfigurationError. Connects lazily."""
        raise NotImplementedError

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> Backend:
        """Wrap a connection, pool or client the user already has (see ``wraps``)."""
        raise NotImplementedError

    def fast_path(self) -> FastPath | None:
        """The store's own entry for plain locks (no TTL, no transaction), or None when it has none.

        The API uses it for the uncontended case only and goes through
        ``acquire`` / ``release`` whenever it answers 0 / False. Stores whose
        hot path is one C call (memory) offer it.
        """
        return None

    # -- locking ------------------------------------------------------------

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
        """Take the lock: its grant, or None when not acquired within ``timeout``.

        ``on_wait`` is called once, just before the backend starts to wait
        because the lock is held. ``transaction`` (stores that support it) is
        the caller's connection inside a transaction. Raises BackendError on a
        driver failure, with nothing held.
        """
        raise NotImplementedError

    def release(self, grant: Grant) -> None:
        """Compare-and-delete release of ``grant``; LockLostError when it was no longer held."""
        raise NotImplementedError

    def abort(self, grant: Grant) -> None:
        """Make sure the store holds nothing for ``grant`` (release interrupted, or hold lost); never raises."""
        try:
            self.release(grant)
        except Exception:  # already gone, or the store is down: nothing more to do here
            pass

    def renew(self, grant: Grant, ttl: float | None = None) -> bool:
        """Extend the lease of ``grant`` by ``ttl`` (its own when None) from now; False when it no longer holds."""
        raise NotSupportedError(f"the {self.scheme} backend has no leases to renew")

    def check(self, grant: Grant) -> bool:
        """Ask the store now (one round trip at most) whether ``grant`` still holds."""
        raise NotSupportedError(f"the {self.scheme} backend cannot check a hold")

    def acquire_many(
        self,
        requests: Sequence[LockRequest],
        *,
        timeout: float | None = None,
        ttl: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
    ) -> list[Grant] | None:
        """All or none, in the given (already sorted) order, under one deadline: a grant per request, or None.

        The default takes them one by one and gives back what it took when one
        fails or the call is interrupted; stores that can do it in one round
        trip override it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        grants: list[Grant] = []
        try:
            for request in requests:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                grant = self.acquire(
                    request.name,
                    request.lock_id,
                    shared=request.shared,
                    timeout=remaining,
                    ttl=ttl,
                    on_wait=on_wait,
                )
                if grant is None:
                    break
                grants.append(grant)
            else:
                return grants
        except BaseException:
            for grant in reversed(grants):
                self.abort(grant)
            raise
        for grant in reversed(grants):
            self.abort(grant)
        return None

    # -- inspection ---------------------------------------------------------

    def held(self, name: str, lock_id: int) -> bool:
        """Is the lock held by anyone, anywhere this store can see?"""
        raise NotImplementedError

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        """Who holds it now; [] when free or when the store cannot tell."""
        return []

    def list_held(self) -> list[Holder]:
        """Every lock held in this store now, as far as it can see (for ``kannuki list``)."""
        return []

    def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        """The operator's tool for a stranded lock: free it whoever holds it; how many holds were freed."""
        raise NotSupportedError(f"the {self.scheme} backend cannot force a release")

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        """Close what the backend opened (connections). The hold owner has released every hold first."""
