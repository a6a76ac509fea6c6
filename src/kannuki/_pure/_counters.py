"""A locker's stats counters (pure twin of ``kannuki._native.Counters``)."""

from __future__ import annotations

import threading
import time

__all__ = ["Counters"]

_NAMES = ("failed", "timeouts", "lost", "renewed", "renew_failed")
_monotonic = time.monotonic


class Counters:
    """Counts of a locker's outcomes and its total hold time, under one small lock."""

    __slots__ = ("_acquired", "_guard", "_hold_time", "_other", "_released")

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._acquired = 0
        self._released = 0
        self._hold_time = 0.0
        self._other = dict.fromkeys(_NAMES, 0)

    def acquired(self) -> float:
        """Count one acquisition; return ``time.monotonic()`` (the start of the hold)."""
        with self._guard:
            self._acquired += 1
        return _monotonic()

    def released(self, since: float) -> float:
        """Count one release of a hold that began at ``since``; return the seconds held."""
        held = _monotonic() - since
        with self._guard:
            self._released += 1
            self._hold_time += held
        return held

    def add(self, name: str) -> None:
        """Count one of: failed, timeouts, lost, renewed, renew_failed."""
        if name not in self._other:
            raise ValueError(f"name must be one of {_NAMES}, not {name!r}")
        with self._guard:
            self._other[name] += 1

    def snapshot(self) -> tuple[int, int, int, int, int, int, int, float]:
        """``(acquired, failed, timeouts, released, lost, renewed, renew_failed, hold_time)``."""
        with self._guard:
            o = self._other
            return (
                self._acquired,
                o["failed"],
                o["timeouts"],
                self._released,
                o["lost"],
                o["renewed"],
                o["renew_failed"],
                self._hold_time,
            )
