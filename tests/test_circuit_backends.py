"""The circuit breaker against a real failing store: a sqlite file whose directory is gone."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import kannuki


def test_failures_open_the_circuit_then_one_probe_closes_it(tmp_path: Path) -> None:
    """N BackendErrors open the circuit (CircuitOpenError, state readable); after reset one probe closes it."""
    where = tmp_path / "gone"
    locker = kannuki.Locker(f"sqlite:///{where}/locks.db", circuit_failures=2, circuit_reset=0.3)
    assert locker.circuit_state().state == "closed"
    for _ in range(2):
        with pytest.raises(kannuki.BackendError, match="cannot open") as info:
            locker.lock("k").acquire(timeout=0)
        assert not isinstance(info.value, kannuki.CircuitOpenError)
        assert info.value.__cause__ is not None
    state = locker.circuit_state()
    assert (state.state, state.failures) == ("open", 2) and 0 < state.retry_after <= 0.3
    with pytest.raises(kannuki.CircuitOpenError) as opened:
        locker.lock("k").acquire(timeout=0)
    assert opened.value.retry_after <= 0.3
    time.sleep(0.35)
    assert locker.circuit_state().state == "half_open"
    with pytest.raises(kannuki.BackendError):  # the probe fails: open again
        locker.lock("k").acquire(timeout=0)
    assert locker.circuit_state().state == "open"
    with pytest.raises(kannuki.CircuitOpenError):
        locker.lock("k").acquire(timeout=0)
    where.mkdir()
    time.sleep(0.35)
    lock = locker.lock("k")
    assert lock.acquire(timeout=0)  # the probe succeeds: closed
    assert locker.circuit_state().state == "closed"
    lock.release()
    locker.close()


def test_without_circuit_every_call_reaches_the_store(tmp_path: Path) -> None:
    """With no circuit_failures set, failures stay BackendError and there is no state."""
    locker = kannuki.Locker(f"sqlite:///{tmp_path}/gone/locks.db")
    for _ in range(3):
        with pytest.raises(kannuki.BackendError) as info:
            locker.lock("k").acquire(timeout=0)
        assert not isinstance(info.value, kannuki.CircuitOpenError)
    assert locker.circuit_state() is None
    locker.close()
