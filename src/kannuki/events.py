"""Lock events and per-locker stats.

``subscribe(callback)`` receives a :class:`LockEvent` for each acquisition,
release, failure, wait, timeout, loss and renewal of every locker whose
``instrumentation`` option is on. With nobody subscribed the cost is one
truth test of a module-level tuple, so the hot path stays cheap.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable

__all__ = ["EVENT_NAMES", "LockEvent", "LockerStats", "subscribe"]

log = logging.getLogger("kannuki")

EVENT_NAMES = frozenset({"acquired", "released", "failed", "timeout", "waiting", "lost", "renewed"})


@dataclasses.dataclass(frozen=True)
class LockEvent:
    """Something that happened to a lock.

    ``duration`` is the wait for ``acquired`` / ``timeout`` / ``failed``, the
    hold for ``released`` / ``lost``, and 0 for ``waiting`` / ``renewed``.
    """

    name: str
    key: str
    lock_id: int
    backend: str
    duration: float
    token: int | None
    shared: bool


Callback = Callable[[LockEvent], object]

# (callback, wanted names or None). Replaced, never mutated, so readers need no lock.
SUBSCRIBERS: tuple[tuple[Callback, frozenset[str] | None], ...] = ()
_guard = threading.Lock()


def subscribe(callback: Callback, events: Iterable[str] | None = None) -> Callable[[], None]:
    """Call ``callback(event)`` for every lock event (or only those named in ``events``).

    Returns a function that unsubscribes. A callback that raises is logged
    on the ``kannuki`` logger; it never breaks the lock operation.

    Example::

        unsubscribe = kannuki.subscribe(print, events={"acquired", "lost"})
    """
    global SUBSCRIBERS
    if not callable(callback):
        raise TypeError(f"callback must be callable, not {type(callback).__qualname__}")
    wanted = None
    if events is not None:
        if isinstance(events, str):
            raise TypeError("events must be a set of event names, not a str")
        wanted = frozenset(events)
        unknown = wanted - EVENT_NAMES
        if unknown:
            raise ValueError(f"events has unknown names {sorted(unknown)}; known: {sorted(EVENT_NAMES)}")
    entry = (callback, wanted)
    with _guard:
        SUBSCRIBERS = (*SUBSCRIBERS, entry)

    def unsubscribe() -> None:
        global SUBSCRIBERS
        with _guard:
            SUBSCRIBERS = tuple(e for e in SUBSCRIBERS if e is not entry)

    return unsubscribe


def emit(
    name: str, key: str, lock_id: int, backend: str, duration: float, token: int | None, shared: bool
) -> None:
    """Deliver one event to the subscribers that want it."""
    event = None
    for callback, wanted in SUBSCRIBERS:
        if wanted is not None and name not in wanted:
            continue
        if event is None:
            event = LockEvent(name, key, lock_id, backend, duration, token, shared)
        try:
            callback(event)
        except Exception:
            log.exception("kannuki event subscriber %r raised on %s of %r", callback, name, key)


@dataclasses.dataclass(frozen=True)
class LockerStats:
    """Counts since the locker was made. ``failed`` includes ``timeouts``; ``hold_time`` is in seconds."""

    acquired: int = 0
    failed: int = 0
    timeouts: int = 0
    released: int = 0
    lost: int = 0
    renewed: int = 0
    renew_failed: int = 0
    hold_time: float = 0.0
