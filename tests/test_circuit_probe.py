"""The circuit breaker's half-open probe: one at a time, and never stranded by an interrupted call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import kannuki
from kannuki.circuit import CircuitBreaker
from support import FakeClock


def _opened(clock: FakeClock, failures: int = 2, reset: float = 10.0) -> CircuitBreaker:
    """A breaker that has just opened after ``failures`` failures."""
    breaker = CircuitBreaker(failures, reset, clock=clock)
    for _ in range(failures):
        assert breaker.check("k") is False
        breaker.failed()
    assert breaker.state().state == "open"
    return breaker


def _call(breaker: CircuitBreaker, store: Callable[[], object]) -> object:
    """One call bracketed the way a Lock brackets its trip to the store."""
    probe = breaker.check("k")
    try:
        result = store()
    except kannuki.BackendError:
        breaker.failed()
        raise
    except BaseException:
        if probe:
            breaker.abandon_probe()
        raise
    breaker.succeeded()
    return result


def _interrupt(exc: BaseException) -> Callable[[], object]:
    def store() -> object:
        raise exc

    return store


def test_one_probe_at_a_time_once_the_reset_has_passed() -> None:
    """Open: refused with retry_after; after reset: check() returns True once, then refuses the rest."""
    clock = FakeClock()
    breaker = _opened(clock)
    with pytest.raises(kannuki.CircuitOpenError) as refused:
        breaker.check("k")
    assert refused.value.key == "k" and refused.value.retry_after == 10.0
    clock.now += 10.5
    assert breaker.state().state == "half_open"
    assert breaker.check("k") is True  # this call is the probe
    with pytest.raises(kannuki.CircuitOpenError):  # a second caller while the probe runs
        breaker.check("k")


@pytest.mark.parametrize(
    "interruption",
    [KeyboardInterrupt(), asyncio.CancelledError(), SystemExit(1)],
    ids=["KeyboardInterrupt", "CancelledError", "SystemExit"],
)
def test_an_interrupted_probe_lets_the_next_call_probe(interruption: BaseException) -> None:
    """A probe cut short by Ctrl-C, cancellation or exit leaves the circuit half-open, not stuck."""
    clock = FakeClock()
    breaker = _opened(clock)
    clock.now += 10.5
    with pytest.raises(type(interruption)):
        _call(breaker, _interrupt(interruption))
    state = breaker.state()
    assert (state.state, state.failures) == ("half_open", 2)  # nothing counted, still half-open
    assert _call(breaker, lambda: "ok") == "ok"  # the next call is allowed to probe, and closes it
    assert breaker.state().state == "closed"


def test_the_new_probe_failing_opens_the_circuit_again() -> None:
    """After an abandoned probe, the next probe's BackendError reopens the circuit for ``reset``."""
    clock = FakeClock()
    breaker = _opened(clock)
    clock.now += 10.5
    with pytest.raises(KeyboardInterrupt):
        _call(breaker, _interrupt(KeyboardInterrupt()))
    with pytest.raises(kannuki.BackendError):
        _call(breaker, _interrupt(kannuki.BackendError("the store is down", key="k")))
    state = breaker.state()
    assert (state.state, state.failures) == ("open", 3) and state.retry_after == 10.0


def test_abandon_probe_without_a_probe_changes_nothing() -> None:
    """abandon_probe() on a closed or open circuit is a no-op."""
    clock = FakeClock()
    breaker = CircuitBreaker(2, 10.0, clock=clock)
    breaker.abandon_probe()
    assert breaker.state().state == "closed"
    breaker.failed()
    breaker.failed()
    breaker.abandon_probe()
    assert breaker.state().state == "open"
    with pytest.raises(kannuki.CircuitOpenError):
        breaker.check("k")
