"""A per-locker circuit breaker: stop hammering a store that keeps failing.

After ``failures`` consecutive backend failures the circuit opens: calls fail
at once with :class:`~kannuki.CircuitOpenError` until ``reset`` seconds have
passed; then one call goes through as a probe (half-open). Its success closes
the circuit, its failure opens it for another ``reset`` seconds. A probe that
ends with neither (interrupted by Ctrl-C, cancelled, or failing for a reason
that is not the store's) is given back with :meth:`CircuitBreaker.abandon_probe`,
so that the next call probes instead.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from kannuki.errors import CircuitOpenError

__all__ = ["CircuitBreaker", "CircuitState"]


@dataclasses.dataclass(frozen=True)
class CircuitState:
    """A snapshot: ``state`` is "closed", "open" or "half_open"."""

    state: str
    failures: int
    retry_after: float  # seconds until a probe is allowed; 0 unless open


class CircuitBreaker:
    """Counts consecutive backend failures and refuses calls while the circuit is open.

    The caller brackets each call to the store::

        probe = circuit.check(key)  # CircuitOpenError while open
        try:
            result = call_the_store()
        except BackendError:
            circuit.failed()
            raise
        except BaseException:
            if probe:
                circuit.abandon_probe()  # neither success nor failure: let the next call probe
            raise
        circuit.succeeded()
    """

    def __init__(self, failures: int, reset: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset = reset
        self._clock = clock
        self._guard = threading.Lock()
        self._failures = 0
        self._open_until = 0.0
        self._probing = False

    def check(self, key: str | None = None) -> bool:
        """Raise CircuitOpenError while open; let one probe through once the reset time has passed.

        Returns True when this call is that probe (the circuit is half-open), False when the
        circuit is closed. A probe must end in :meth:`succeeded`, :meth:`failed` or
        :meth:`abandon_probe`; until then every other call is refused.
        """
        if not self._open_until:
            return False
        with self._guard:
            if not self._open_until:
                return False
            wait = self._open_until - self._clock()
            if wait <= 0 and not self._probing:
                self._probing = True  # this caller is the probe
                return True
        raise CircuitOpenError(
            f"the backend failed {self._failures} times in a row; not trying again for {max(wait, 0):.1f}s"
            + (f" (lock {key!r})" if key is not None else ""),
            key=key,
            retry_after=max(wait, 0.0),
        )

    def succeeded(self) -> None:
        """A call reached the store and it answered: close the circuit."""
        if self._failures or self._open_until:
            with self._guard:
                self._failures = 0
                self._open_until = 0.0
                self._probing = False

    def failed(self) -> None:
        """A call failed in the store: count it; open the circuit at the threshold or when the probe failed."""
        with self._guard:
            self._failures += 1
            if self._probing or self._failures >= self.threshold:
                self._open_until = self._clock() + self.reset
                self._probing = False

    def abandon_probe(self) -> None:
        """The probe ended with neither success nor failure (interrupted, cancelled): let the next call probe.

        The circuit stays half-open and nothing is counted. A no-op when no probe is in flight,
        so it is safe on any path that did not reach :meth:`succeeded` or :meth:`failed`; call it
        only for the call :meth:`check` returned True to, or an interrupted ordinary call may
        give back a probe another thread is still running.
        """
        if self._probing:
            with self._guard:
                self._probing = False

    def state(self) -> CircuitState:
        """A snapshot of the circuit: closed, open (with the seconds left) or half-open."""
        with self._guard:
            if not self._open_until:
                return CircuitState("closed", self._failures, 0.0)
            wait = self._open_until - self._clock()
            if wait > 0:
                return CircuitState("open", self._failures, wait)
            return CircuitState("half_open", self._failures, 0.0)
