"""The small types every store speaks in, sync and async alike (not generated: one copy for both).

A backend knows its driver and its server and nothing of ``Lock``, ``Locker``,
strategies, events or stats. It is handed the validated full lock name and its
64-bit ID and answers with a :class:`Grant` (or None: not acquired). The grant
records what the acquisition pinned in the store (a connection, a server PID,
a lease); the hold owner (``kannuki._hold``) keeps it and hands it back to
``release`` / ``renew`` / ``check`` / ``abort``. Backends keep no map of their
own acquisitions.

Timeouts: ``None`` waits forever, ``0`` tries once, a positive float waits up
to that many seconds. The API layer validates them before they get here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

from kannuki.errors import ConfigurationError
from kannuki.options import did_you_mean, locker_option_names

__all__ = [
    "BACKEND_OPTIONS",
    "NO_WAIT_CALLBACK",
    "FastPath",
    "Grant",
    "Holder",
    "LockRequest",
    "StoreTraits",
    "reject_unknown_options",
]


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
            parts.append("since " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since)))
        return " ".join(parts) or "another holder"


@dataclasses.dataclass(frozen=True)
class LockRequest:
    """One key of a ``lock_many`` call."""

    name: str
    lock_id: int
    shared: bool = False


class Grant:
    """What one acquisition holds in the store; made by the backend, kept by the hold owner.

    ``token`` is the fencing token (> 0). ``ttl`` is the lease length in
    seconds when the hold is a lease the owner must renew (None: no lease).
    ``conn`` is the pinned connection or session, ``pid`` the server's session
    ID at acquire, ``data`` anything else the store needs back (a local queue
    token, a lease value ...).
    """

    __slots__ = ("conn", "data", "lock_id", "name", "pid", "shared", "token", "ttl")

    def __init__(
        self,
        name: str,
        lock_id: int,
        shared: bool,
        token: int,
        ttl: float | None = None,
        conn: Any = None,
        pid: int | None = None,
        data: Any = None,
    ) -> None:
        self.name = name
        self.lock_id = lock_id
        self.shared = shared
        self.token = token
        self.ttl = ttl
        self.conn = conn
        self.pid = pid
        self.data = data

    def __repr__(self) -> str:
        lease = f" ttl={self.ttl:g}" if self.ttl else ""
        return f"<Grant {self.name!r} token={self.token}{lease}>"


class FastPath(Protocol):
    """A store's uncontended entry (see ``Backend.fast_path``); arguments arrive already validated."""

    def try_acquire(self, name: str, shared: bool, /) -> int:
        """One try, never waiting: a token, or 0 (the caller then goes through ``Backend.acquire``)."""

    def release(self, name: str, token: int, /) -> bool:
        """Compare-and-delete: True when released; False sends the caller to ``Backend.release``."""


def NO_WAIT_CALLBACK() -> None:
    """The default ``on_wait``: nobody to tell."""


class StoreTraits:
    """What a store declares, sync or async: class attributes the API reads to refuse early."""

    scheme: ClassVar[str] = ""
    supports_shared: ClassVar[bool] = False
    supports_transaction: ClassVar[bool] = False
    supports_ttl: ClassVar[bool] = False
    # The store's default lease length (seconds), or None when its holds are not leases.
    ttl: float | None = None
    # True when ``gone(grant)`` can tell, without a round trip, that a held lock's session died.
    watches: ClassVar[bool] = False

    @classmethod
    def wraps(cls, obj: Any) -> bool:
        """True when ``obj`` is a connection or pool this backend can drive (checked without importing drivers)."""
        return False

    def hand_off(self, grant: Grant) -> bool:
        """Ready ``grant`` to be kept and released by someone else; False when this store cannot.

        ``Lock.detach()`` asks it. True means the hold lives in the store alone (a lease row, a
        Redis key, an entry of the in-process table), so another process (or thread) can renew,
        check and compare-and-delete it with a Grant rebuilt from ``name``, ``lock_id``,
        ``shared``, ``token``, ``ttl`` and ``data`` (None or a str). False (the default) means it
        lives in something of this process: a pinned connection, a file descriptor, a lease
        client.
        """
        return False

    def after_fork_in_child(self) -> None:
        """In a forked child: forget (never close) the parent's connections."""

    def describe(self) -> str:
        """The store in one line for messages, without secrets (no password)."""
        return f"{self.scheme}://"

    def gone(self, grant: Grant) -> str | None:
        """Why ``grant``'s session is dead, seen without a round trip (its socket); None while it looks alive.

        Called by the hold owner's watcher every ``watch_interval`` for stores that set
        ``watches``; it must never block, and must answer None while a statement of the
        caller is in flight on the connection (it cannot tell then).
        """
        return None

    def listing_note(self) -> str | None:
        """What ``list_held`` cannot see on this store, in one sentence (None: it sees every lock)."""
        return None


# The backend options each store accepts (keywords of Locker(...) besides the Locker options), for
# the "did you mean" of a misspelt one. tests/test_bad_input.py checks each is accepted.
BACKEND_OPTIONS: dict[str, tuple[str, ...]] = {
    "memory": ("ttl",),
    "sqlite": ("ttl", "busy_timeout"),
    "file": ("ttl",),
    "postgresql": ("pool_size", "connect_timeout", "application_name", "allow_replica", "fencing"),
    "mysql": ("connect_timeout", "pool_size", "fencing", "fencing_table", "allow_cluster"),
    "redis": ("ttl", "namespace", "socket_timeout", "connect_timeout"),
}
BACKEND_OPTIONS["mariadb"] = BACKEND_OPTIONS["mysql"]


def reject_unknown_options(scheme: str, options: dict[str, Any], known: Iterable[str] = ()) -> None:
    """Raise ConfigurationError naming the first option the backend does not know.

    The message suggests the closest option name ("did you mean 'default_timeout'?") among the
    ``Locker`` options, the store's own (:data:`BACKEND_OPTIONS`) and ``known``.
    """
    if options:
        name = min(options)
        candidates = [*locker_option_names(), *BACKEND_OPTIONS.get(scheme, ()), *known]
        raise ConfigurationError(
            f"unknown option {name!r} for the {scheme} backend{did_you_mean(name, candidates)}"
        )
