"""Prometheus metrics for kannuki's lock events (needs the extra ``kannuki[prometheus]``).

::

    from kannuki.contrib.prometheus import instrument

    uninstrument = instrument()          # the default prometheus_client registry

Exports ``kannuki_lock_events_total{backend, event}`` (a counter per backend
and event name), ``kannuki_lock_wait_seconds{backend}`` (time spent waiting
for locks that were acquired or timed out) and
``kannuki_lock_hold_seconds{backend}`` (time locks were held until released
or lost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "kannuki.contrib.prometheus needs prometheus_client: install the extra with "
        "pip install 'kannuki[prometheus]'"
    ) from exc

from kannuki.events import LockEvent, subscribe

__all__ = ["instrument"]

WAIT_EVENTS = frozenset({"acquired", "timeout"})
HOLD_EVENTS = frozenset({"released", "lost"})

# Lock waits and holds span microseconds (memory) to minutes (jobs).
BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))


def instrument(registry: CollectorRegistry | None = None) -> Callable[[], None]:
    """Export kannuki's lock events as Prometheus metrics on ``registry`` (default: the global one).

    Returns a function that stops the export and unregisters the metrics.
    Events come from every locker whose ``instrumentation`` option is on.

    Raises ValueError when kannuki's metrics are already registered there.
    """
    registry = REGISTRY if registry is None else registry
    made: list[Any] = []
    try:
        events = Counter(
            "kannuki_lock_events",
            "kannuki lock events by backend and event name",
            ["backend", "event"],
            registry=registry,
        )
        made.append(events)
        wait = Histogram(
            "kannuki_lock_wait_seconds",
            "Seconds spent waiting for a lock (acquired or timed out)",
            ["backend"],
            registry=registry,
            buckets=BUCKETS,
        )
        made.append(wait)
        hold = Histogram(
            "kannuki_lock_hold_seconds",
            "Seconds a lock was held (released or lost)",
            ["backend"],
            registry=registry,
            buckets=BUCKETS,
        )
        made.append(hold)
    except ValueError as exc:  # prometheus_client: "Duplicated timeseries"
        for metric in made:
            registry.unregister(metric)
        raise ValueError(
            "kannuki metrics are already registered on this registry; "
            "call the function that instrument() returned before instrumenting again"
        ) from exc

    def record(event: LockEvent) -> None:
        events.labels(event.backend, event.name).inc()
        if event.name in WAIT_EVENTS:
            wait.labels(event.backend).observe(event.duration)
        elif event.name in HOLD_EVENTS:
            hold.labels(event.backend).observe(event.duration)

    unsubscribe = subscribe(record)

    def uninstrument() -> None:
        unsubscribe()
        for metric in made:
            try:
                registry.unregister(metric)
            except KeyError:  # already undone
                pass

    return uninstrument
