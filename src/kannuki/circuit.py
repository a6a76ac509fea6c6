"""A per-locker circuit breaker: stop hammering a store that keeps failing.

After ``failures`` consecutive backend failures the circuit opens: calls fail
at once with :class:`~kannuki.CircuitOpenError` until ``reset`` seconds have
passed; then one call goes through as a probe (half-open). Its success closes
the circuit, its failure opens it for another ``reset`` seconds.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

from kannuki.errors import CircuitOpenError

__all__ = ["CircuitBreaker", "CircuitState"]


@dataclasses.dataclass(frozen=True)
class CircuitState:
    """A snapshot: ``state`` is "closed", "open" or "half_open"."""

    state: str
    failures: int
    retry_after: float  # seconds until a probe is allowed; 0 unless open


class CircuitBreaker:
    def __init__(self, failures: int, reset: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset = reset
        self._clock = clock
        self._guard = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    def check(self, key: object = None) -> None:
        """Raise CircuitOpenError while open; let one probe through once the reset time has passed."""
        if not self._open_until:
            return
        with self._guard:
            if not self._open_until:
                return
            wait = self._open_until - self._clock()
            if wait <= 0 and not self._probing:
                self._probing = True  # this caller is the probe
                return
        raise CircuitOpenError(
            f"the backend failed {self._failures} times in a row; not trying again for {max(wait, 0):.1f}s"
            + (f" (lock {key!r})" if key is not None else ""),
            key=key,
            retry_after=max(wait, 0.0),
        )

    def succeeded(self) -> None:
        if self._failures or self._open_until:
            with self._guard:
                self._failures = 0
                self._open_until = 0.0
                self._probing = False

    def failed(self) -> None:
        with self._guard:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                self._open_until = self._clock() + self.reset
                self._probing = False

    def state(self) -> CircuitState:
        with self._guard:
            if not self._open_until:
                return CircuitState("closed", self._failures, 0.0)
            wait = self._open_until - self._clock()
            if wait > 0:
                return CircuitState("open", self._failures, wait)
            return CircuitState("half_open", self._failures, 0.0)
