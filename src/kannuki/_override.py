"""The seam test mode plugs into: while a table is set here, every locker sends its locks to it.

``kannuki.testing`` sets and clears the table; lockers (sync and async) register
themselves here when they are made. Setting a table switches every live locker
to it at once, so the API's hot path reads only its own locker's state and
never a global; the API never imports ``kannuki.testing``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["TABLE", "default_locker_factory", "set_table", "track"]


class _Switchable(Protocol):
    def _use_table(self, table: Any) -> None: ...

    def _use_own_backend(self) -> None: ...


TABLE: Any = None
# Called by kannuki.locker.get_locker() when no default locker was configured (test mode sets it).
default_locker_factory: Callable[[], Any] | None = None

_lockers: weakref.WeakSet[_Switchable] = weakref.WeakSet()
_guard = threading.Lock()


def track(locker: _Switchable) -> None:
    """Register a new locker; it joins test mode at once when it is on."""
    with _guard:
        _lockers.add(locker)
        table = TABLE
    if table is not None:
        locker._use_table(table)


def set_table(table: Any) -> None:
    """Send every locker's locks to ``table`` (None: back to their own stores)."""
    global TABLE
    with _guard:
        TABLE = table
        lockers = list(_lockers)
    for locker in lockers:
        if table is None:
            locker._use_own_backend()
        else:
            locker._use_table(table)
