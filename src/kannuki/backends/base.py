"""The one interface every store implements, and the small types it speaks in.

A backend knows its driver and its server; it knows nothing of ``Lock``,
``Locker``, strategies, events or stats. It is handed the validated full lock
name and its 64-bit ID, and answers with a fencing token (an int > 0) or 0
for "not acquired". The token is also the handle: ``release`` and ``renew``
take it back, so a backend keeps whatever it pinned for an acquisition (a
connection, a server PID, a lease) in its own map keyed by token.

Timeouts: ``None`` waits forever, ``0`` tries once, a positive float waits up
to that many seconds. The API layer validates them before they get here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Protocol, Sequence

from kannuki.errors import ConfigurationError, NotSupportedError

__all__ = ["Backend", "BackendListener", "FastPath", "Holder", "LockRequest", "NO_WAIT_CALLBACK", "StoreTraits"]


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock, as far as the backend can tell; unknown fields are None."""

    name: str
    lock_id: int
    shared: bool = False
    token: int | None = None
    pid: int | None = None
    host: str | None = None
    user: str | None = None
    application: str | None = None
    since: float | None = None  # UNIX time the lock was taken
    expires_at: float | None = None  # UNIX time a lease runs out

    def describe(self) -> str:
        """One human line: ``pid 1234 (app) on host since ...``."""
        parts = []
        if self.pid is not None:
            parts.append(f"pid {self.pid}")
        if self.application:
            parts.append(f"({self.application})")
        if self.user:
            parts.append(f"user {self.user}")
        if self.host:
            parts.append(f"on {self.host}")
        if self.shared:
            parts.append("[shared]")
        if self.since is not None:
            import time

            parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)))
        return " ".join(parts) or "another holder"


@dataclasses.dataclass(frozen=True)
class LockRequest:
    """One key of a ``lock_many`` call."""

    name: str
    lock_id: int
    shared: bool = False


class BackendListener:
    """What a backend calls when something happens outside a call: a renewal, a loss.

    The API layer installs a subclass with ``Backend.set_listener``; the
    default does nothing, so a backend used on its own needs none.
    """

    def lost(self, name: str, lock_id: int, token: int, reason: str) -> None:
        """The lock ``token`` of ``name`` is gone (lease expired, connection dropped)."""

    def renewed(self, name: str, lock_id: int, token: int) -> None:
        """The lease of ``token`` was extended."""

    def renew_failed(self, name: str, lock_id: int, token: int, error: BaseException) -> None:
        """A renewal attempt failed; the lease may still be valid until it expires."""


class FastPath(Protocol):
    """A store's uncontended entry (see :meth:`Backend.fast_path`); arguments arrive already validated."""

    def try_acquire(self, name: str, shared: bool, /) -> int:
        """One try, never waiting: a token, or 0 (the caller then goes through ``Backend.acquire``)."""

    def release(self, name: str, token: int, /) -> bool:
        """Compare-and-delete: True when released; False sends the caller to ``Backend.release``."""


def NO_WAIT_CALLBACK() -> None:
    """The default ``on_wait``: nobody to tell."""


class StoreTraits:
    """What a sync store (:class:`Backend`) and an async one (``AsyncBackend``) declare alike.

    Class attributes say what the store can do, so the API can refuse early
    with ``NotSupportedError`` rather than half-acquire.
    """

    scheme: ClassVar[str] = ""
    supports_shared: ClassVar[bool] = False
    supports_transaction: ClassVar[bool] = False
    supports_ttl: ClassVar[bool] = False
    # True when the backend calls its listener's ``lost`` / ``renewed`` outside a call.
    reports_loss: ClassVar[bool] = False

    listener: BackendListener = BackendListener()

    @classmethod
    def wraps(cls, obj: Any) -> bool:
        """True when ``obj`` is a connection or pool this backend can drive (checked without importing drivers)."""
        return False

    def set_listener(self, listener: BackendListener) -> None:
        self.listener = listener

    def after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections and acquisitions."""

    def describe(self) -> str:
        """The store in one line for messages, without secrets (no password)."""
        return f"{self.scheme}://"


class Backend(StoreTraits):
    """Base class of the stores. Subclasses override what they support (see :class:`StoreTraits`)."""

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "Backend":
        """Build from a URL of this backend's scheme; unknown options raise ConfigurationError."""
        raise NotImplementedError

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> "Backend":
        raise NotImplementedError

    def fast_path(self) -> FastPath | None:
        """The store's own entry for plain locks (no TTL, no transaction), or None when it has none.

        The API layer uses it for the uncontended case only and takes ``acquire`` /
        ``release`` whenever it answers 0 / False, so those stay the one place that
        waits, reports and raises. Stores whose hot path is a C call (memory) offer it.
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
    ) -> int:
        """Take the lock; return its fencing token (> 0), or 0 when not acquired in ``timeout``.

        ``on_wait`` is called once, just before the backend starts to wait
        because the lock is held. ``transaction`` (backends that support it)
        is a caller's connection inside a transaction, or True for "use one".
        Raises BackendError on driver failure; must leave nothing held when it raises.
        """
        raise NotImplementedError

    def release(self, name: str, lock_id: int, token: int) -> None:
        """Compare-and-delete release of acquisition ``token``; LockLostError if it was lost."""
        raise NotImplementedError

    def renew(self, name: str, lock_id: int, token: int, ttl: float | None = None) -> bool:
        """Extend a lease now; False when ``token`` no longer holds. Stores without leases say True while held."""
        raise NotSupportedError(f"the {self.scheme} backend has no leases to renew")

    def acquire_many(
        self,
        requests: Sequence[LockRequest],
        *,
        timeout: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
    ) -> list[int] | None:
        """All or none, in the given (already sorted) order; a token per request, or None.

        The default takes them one by one under one deadline and gives back
        what it took when one fails; backends that can do it in one round
        trip override it.
        """
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        tokens: list[int] = []
        try:
            for request in requests:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                token = self.acquire(
                    request.name, request.lock_id, shared=request.shared, timeout=remaining, on_wait=on_wait
                )
                if not token:
                    break
                tokens.append(token)
            else:
                return tokens
        except BaseException:
            self._give_back(requests, tokens)
            raise
        self._give_back(requests, tokens)
        return None

    def _give_back(self, requests: Sequence[LockRequest], tokens: list[int]) -> None:
        for request, token in zip(reversed(requests[: len(tokens)]), reversed(tokens)):
            self.release(request.name, request.lock_id, token)

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

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        """Release what the backend opened (connections, threads). Held locks are lost."""


def reject_unknown_options(scheme: str, options: dict[str, Any]) -> None:
    """Raise ConfigurationError naming the first option the backend does not know."""
    if options:
        name = sorted(options)[0]
        raise ConfigurationError(f"unknown option {name!r} for the {scheme} backend")
