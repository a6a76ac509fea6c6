"""Validation of user input: timeouts, strategies, and the options of a ``Locker``.

Every check names the parameter it refuses, so a bad value is fixed at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable
from typing import Any, Literal, overload

from kannuki._coreapi import BACKOFF_KINDS, JITTER_KINDS
from kannuki.errors import ConfigurationError

__all__ = ["DEFAULT", "STRATEGIES", "LockerOptions", "check_seconds", "did_you_mean", "locker_option_names"]

STRATEGIES = ("blocking", "non_blocking", "retry")


class _Default:
    """Marker for "not given: use the locker's default" (None already means "wait forever")."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT"

    def __reduce__(self) -> str:
        return "DEFAULT"


DEFAULT: Any = _Default()


@overload
def check_seconds(
    value: object, name: str, *, allow_none: Literal[False], error: type[ValueError] = ValueError
) -> float: ...
@overload
def check_seconds(
    value: object, name: str, *, allow_none: bool = True, error: type[ValueError] = ValueError
) -> float | None: ...
def check_seconds(
    value: object, name: str, *, allow_none: bool = True, error: type[ValueError] = ValueError
) -> float | None:
    """Return ``value`` as a float of seconds (or None); refuse bools, negatives, NaN and infinity."""
    if value is None:
        if allow_none:
            return None
        raise error(f"{name} must be a number of seconds, not None")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__qualname__}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float (10**400): not a finite number of seconds
        raise error(
            f"{name} must be a finite number of seconds >= 0, not an int too large for a float"
        ) from None
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
        raise error(f"{name} must be a finite number of seconds >= 0, not {value!r}")
    return seconds


def check_choice(
    value: object, name: str, choices: tuple[str, ...], *, error: type[ValueError] = ValueError
) -> str:
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return str(value)


@dataclasses.dataclass(frozen=True)
class LockerOptions:
    """The API-level options of a ``Locker`` (backend options go to the backend)."""

    key_prefix: str | None = None
    default_timeout: float | None = None
    strategy: str = "blocking"
    retry_attempts: int = 5
    retry_interval: float = 0.05
    retry_max_interval: float = 2.0
    retry_backoff: str = "exponential"
    retry_jitter: str = "full"
    instrumentation: bool = True
    circuit_failures: int | None = None
    circuit_reset: float = 30.0
    auto_renew: bool = True
    on_lost: Any = None  # callable(lock, reason), called when a held lock is found lost
    # Seconds between looks at the connections of held PostgreSQL / MySQL locks (no round trip
    # while healthy): a dead session is noticed within twice this. None turns the watcher off.
    watch_interval: float | None = 1.0

    def __post_init__(self) -> None:
        err = ConfigurationError
        if self.key_prefix is not None and not isinstance(self.key_prefix, str):
            raise TypeError(f"key_prefix must be a str or None, not {type(self.key_prefix).__qualname__}")
        object.__setattr__(
            self, "default_timeout", check_seconds(self.default_timeout, "default_timeout", error=err)
        )
        check_choice(self.strategy, "strategy", STRATEGIES, error=err)
        if isinstance(self.retry_attempts, bool) or not isinstance(self.retry_attempts, int):
            raise TypeError(f"retry_attempts must be an int, not {type(self.retry_attempts).__qualname__}")
        if self.retry_attempts < 1:
            raise err(f"retry_attempts must be at least 1, not {self.retry_attempts}")
        for name in ("retry_interval", "retry_max_interval", "circuit_reset"):
            object.__setattr__(
                self, name, check_seconds(getattr(self, name), name, allow_none=False, error=err)
            )
        if self.retry_max_interval < self.retry_interval:
            raise err(
                f"retry_max_interval ({self.retry_max_interval}) must not be below retry_interval ({self.retry_interval})"
            )
        check_choice(self.retry_backoff, "retry_backoff", BACKOFF_KINDS, error=err)
        jitter = self.retry_jitter
        if isinstance(jitter, bool):
            jitter = "full" if jitter else "none"
        object.__setattr__(
            self, "retry_jitter", check_choice(jitter, "retry_jitter", JITTER_KINDS, error=err)
        )
        interval = check_seconds(self.watch_interval, "watch_interval", error=err)
        if interval == 0:
            raise err("watch_interval must be > 0 seconds, or None to turn the watcher off")
        object.__setattr__(self, "watch_interval", interval)
        for name in ("instrumentation", "auto_renew"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if self.on_lost is not None and not callable(self.on_lost):
            raise TypeError(
                f"on_lost must be a callable(lock, reason) or None, not {type(self.on_lost).__qualname__}"
            )
        failures = self.circuit_failures
        if failures is not None and (
            isinstance(failures, bool) or not isinstance(failures, int) or failures < 1
        ):
            raise err(f"circuit_failures must be a positive int or None, not {failures!r}")

    @classmethod
    def split(cls, options: dict[str, Any]) -> tuple[LockerOptions, dict[str, Any]]:
        """Separate API options from backend options, validating the former."""
        names = {field.name for field in dataclasses.fields(cls)}
        mine = {k: v for k, v in options.items() if k in names}
        rest = {k: v for k, v in options.items() if k not in names}
        return cls(**mine), rest


def locker_option_names() -> tuple[str, ...]:
    """The API-level option names of ``Locker`` / ``configure`` (the fields of :class:`LockerOptions`)."""
    return tuple(field.name for field in dataclasses.fields(LockerOptions))


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` naming the known option closest to a misspelt ``name``, or ``""``."""
    close = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
