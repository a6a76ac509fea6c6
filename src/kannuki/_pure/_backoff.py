"""Backoff schedules: constant, linear and exponential, capped, with optional jitter.

The random stream is splitmix64, written out here and in the Cython twin, so
the same seed gives the same delays bit for bit in both.
"""

from __future__ import annotations

import math
import os

BACKOFF_KINDS = ("constant", "linear", "exponential")
JITTER_KINDS = ("none", "full", "decorrelated")

_M64 = 0xFFFFFFFFFFFFFFFF
_TWO_M53 = 1.0 / (1 << 53)


def _check_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return number


def _seed_state(seed: object) -> int:
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, not {type(seed).__name__}")
    return seed & _M64


class Backoff:
    """A delay schedule for retries: ``next_delay()`` gives the wait before each attempt.

    ``kind`` is "constant" (``interval``), "linear" (``interval * (n + 1)``) or
    "exponential" (``interval * 2**n``), n being the attempt from 0, never above
    ``cap``. ``jitter`` "none" keeps that value, "full" draws uniformly in
    ``[0, value)``, "decorrelated" draws ``min(cap, uniform(interval, 3 * prev))``
    (AWS style; ``kind`` is then ignored). ``seed`` makes the draws repeatable.
    """

    __slots__ = ("_prev", "_state", "attempt", "cap", "interval", "jitter", "kind")

    def __init__(
        self,
        kind: str = "exponential",
        interval: float = 0.05,
        cap: float = 2.0,
        jitter: str = "full",
        seed: int | None = None,
    ) -> None:
        if kind not in BACKOFF_KINDS:
            raise ValueError(f"kind must be one of {', '.join(BACKOFF_KINDS)}; got {kind!r}")
        if jitter not in JITTER_KINDS:
            raise ValueError(f"jitter must be one of {', '.join(JITTER_KINDS)}; got {jitter!r}")
        interval_s = _check_seconds("interval", interval)
        cap_s = _check_seconds("cap", cap)
        if cap_s < interval_s:
            raise ValueError(f"cap ({cap!r}) must not be below interval ({interval!r})")
        self.kind = kind
        self.interval = interval_s
        self.cap = cap_s
        self.jitter = jitter
        self.attempt = 0
        self._state = _seed_state(seed)
        self._prev = interval_s

    def __repr__(self) -> str:
        return (
            f"Backoff(kind={self.kind!r}, interval={self.interval!r}, cap={self.cap!r}, "
            f"jitter={self.jitter!r}, attempt={self.attempt})"
        )

    def _uniform(self) -> float:
        # splitmix64, then the top 53 bits as a float in [0, 1).
        self._state = (self._state + 0x9E3779B97F4A7C15) & _M64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        z ^= z >> 31
        return (z >> 11) * _TWO_M53

    def _base(self, n: int) -> float:
        if self.kind == "constant":
            value = self.interval
        elif self.kind == "linear":
            value = self.interval * float(n + 1)
        elif n >= 1024:
            value = self.cap if self.interval > 0.0 else 0.0
        else:
            value = self.interval * (2.0**n)
        return min(self.cap, value)

    def next_delay(self, remaining: float | None = None) -> float:
        """The delay before the next attempt, never above ``cap`` nor ``remaining``; counts the attempt."""
        if remaining is not None:
            if isinstance(remaining, bool) or not isinstance(remaining, (int, float)):
                raise TypeError(
                    f"remaining must be a number of seconds or None, not {type(remaining).__name__}"
                )
            if math.isnan(remaining) or remaining < 0:
                raise ValueError(f"remaining must be a number of seconds >= 0, got {remaining!r}")
        if self.jitter == "decorrelated":
            low = self.interval
            delay = min(self.cap, low + (self._prev * 3.0 - low) * self._uniform())
            self._prev = delay
        elif self.jitter == "full":
            delay = self._base(self.attempt) * self._uniform()
        else:
            delay = self._base(self.attempt)
        self.attempt += 1
        if remaining is not None and delay > remaining:
            delay = float(remaining)
        return delay

    def reset(self) -> None:
        """Start the schedule over (attempt 0); the random stream goes on."""
        self.attempt = 0
        self._prev = self.interval
