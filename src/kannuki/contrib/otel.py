"""OpenTelemetry traces and metrics of kannuki's lock events (needs the extra ``kannuki[otel]``).

::

    from kannuki.contrib.otel import instrument

    uninstrument = instrument()          # the global tracer and meter providers
    ...
    uninstrument()

Built on :func:`kannuki.subscribe`, so it sees every locker whose
``instrumentation`` option is on, sync and async alike. Each event carries
how long its wait or hold lasted, so each span is recorded when its event
arrives, with the start time that duration gives:

- ``kannuki.lock.acquire``, one per acquisition attempt that was decided: from
  the start of its wait to ``acquired``, ``timeout`` or ``failed`` (a try
  that found the key held). A timeout is an error span.
- ``kannuki.lock.hold``, one per hold: from the acquisition to ``released`` or
  ``lost``. A loss is an error span.

Span attributes: ``kannuki.lock.key``, ``kannuki.lock.id``,
``kannuki.lock.store`` (the backend: ``postgresql``, ``redis`` ...),
``kannuki.lock.shared``, ``kannuki.lock.outcome`` (the event name),
``kannuki.lock.token`` (the fencing token, once acquired),
``kannuki.lock.wait.duration`` or ``kannuki.lock.hold.duration`` (seconds),
and ``error.type`` on an error span.

Metrics (meter ``kannuki``), with the low-cardinality attributes only (store,
shared, outcome; never the key): counters ``kannuki.lock.acquired``,
``kannuki.lock.failed`` (outcome ``timeout`` or ``failed``) and
``kannuki.lock.lost``, and histograms ``kannuki.lock.wait.duration`` (outcome
``acquired``, ``timeout`` or ``failed``) and ``kannuki.lock.hold.duration``
(outcome ``released`` or ``lost``), in seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "kannuki.contrib.otel needs opentelemetry-api: install the extra with pip install 'kannuki[otel]'"
    ) from exc

from kannuki import __version__
from kannuki.events import LockEvent, subscribe

__all__ = ["instrument"]

SCOPE = "kannuki"

KEY = "kannuki.lock.key"
LOCK_ID = "kannuki.lock.id"
STORE = "kannuki.lock.store"
SHARED = "kannuki.lock.shared"
OUTCOME = "kannuki.lock.outcome"
TOKEN = "kannuki.lock.token"
WAIT_DURATION = "kannuki.lock.wait.duration"
HOLD_DURATION = "kannuki.lock.hold.duration"
ERROR_TYPE = "error.type"

ACQUIRE_SPAN = "kannuki.lock.acquire"
HOLD_SPAN = "kannuki.lock.hold"

WAIT_OUTCOMES = frozenset({"acquired", "timeout", "failed"})
HOLD_OUTCOMES = frozenset({"released", "lost"})
ERRORS = frozenset({"timeout", "lost"})  # "failed" is a try that found the key held: an answer, not an error

# Lock waits and holds span microseconds (memory) to minutes (jobs); the same bounds as the Prometheus bridge.
BUCKETS = (0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

# The (tracer provider, meter provider) pairs instrumented now: a second instrument() of one would count twice.
_active: set[tuple[int, int]] = set()
_active_guard = threading.Lock()


def instrument(*, tracer_provider: Any = None, meter_provider: Any = None) -> Callable[[], None]:
    """Record kannuki's lock events as OpenTelemetry spans and metrics; returns the function that stops it.

    ``tracer_provider`` / ``meter_provider``: where to record (default: the global
    providers, ``opentelemetry.trace.get_tracer_provider()`` and its metrics twin).

    Raises ValueError when kannuki already records to these providers (call the
    function the first instrument() returned before instrumenting again).
    """
    tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
    meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
    tracing = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
    metering = metrics.get_meter_provider() if meter_provider is None else meter_provider
    pair = (id(tracing), id(metering))
    with _active_guard:
        if pair in _active:
            raise ValueError(
                "kannuki already records to these OpenTelemetry providers; call the function that "
                "instrument() returned before instrumenting again"
            )
        _active.add(pair)

    acquired = meter.create_counter(
        "kannuki.lock.acquired", unit="{acquisition}", description="Locks acquired"
    )
    failed = meter.create_counter(
        "kannuki.lock.failed",
        unit="{acquisition}",
        description="Acquisitions that timed out or found the key held",
    )
    lost = meter.create_counter("kannuki.lock.lost", unit="{acquisition}", description="Held locks lost")
    wait = meter.create_histogram(
        WAIT_DURATION,
        unit="s",
        description="Time spent waiting for a lock, until acquired, timed out or refused",
        explicit_bucket_boundaries_advisory=BUCKETS,
    )
    hold = meter.create_histogram(
        HOLD_DURATION,
        unit="s",
        description="Time a lock was held, until released or lost",
        explicit_bucket_boundaries_advisory=BUCKETS,
    )

    def record(event: LockEvent) -> None:
        outcome = event.name
        if outcome in WAIT_OUTCOMES:
            span_name, duration_name, histogram = ACQUIRE_SPAN, WAIT_DURATION, wait
        elif outcome in HOLD_OUTCOMES:
            span_name, duration_name, histogram = HOLD_SPAN, HOLD_DURATION, hold
        else:  # waiting, renewed: no span of their own
            return
        labels: dict[str, str | bool] = {STORE: event.backend, SHARED: event.shared, OUTCOME: outcome}
        histogram.record(event.duration, labels)
        if outcome == "acquired":
            acquired.add(1, {STORE: event.backend, SHARED: event.shared})
        elif outcome == "lost":
            lost.add(1, {STORE: event.backend, SHARED: event.shared})
        elif outcome in ("timeout", "failed"):
            failed.add(1, labels)
        attributes: dict[str, Any] = {
            KEY: event.key,
            LOCK_ID: event.lock_id,
            **labels,
            duration_name: event.duration,
        }
        if event.token is not None:
            attributes[TOKEN] = event.token
        end = time.time_ns()
        span = tracer.start_span(
            span_name,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=end - int(event.duration * 1e9),
        )
        if outcome in ERRORS:
            span.set_attribute(ERROR_TYPE, outcome)
            span.set_status(Status(StatusCode.ERROR, f"the lock {event.key!r}: {outcome}"))
        span.end(end_time=end)

    unsubscribe = subscribe(record)

    def uninstrument() -> None:
        unsubscribe()
        with _active_guard:
            _active.discard(pair)

    return uninstrument
