"""kannuki.contrib.prometheus: lock events as metrics on a real prometheus_client registry."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

import kannuki

prometheus_client = pytest.importorskip("prometheus_client")
from kannuki.contrib.prometheus import instrument  # noqa: E402


def sample(registry: object, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)  # type: ignore[attr-defined, no-any-return]


def test_counters_and_histograms_per_backend_and_event() -> None:
    """Events are counted by backend and name; waits and holds land in their histograms."""
    registry = prometheus_client.CollectorRegistry()
    uninstrument = instrument(registry)
    locker = kannuki.Locker(f"memory://prom-{uuid.uuid4().hex[:8]}")
    try:
        with locker.lock("p"):
            assert not locker.lock("p", timeout=0.01).acquire()
            assert not locker.lock("p").acquire(blocking=False)
        assert sample(registry, "kannuki_lock_events_total", backend="memory", event="acquired") == 1
        assert sample(registry, "kannuki_lock_events_total", backend="memory", event="released") == 1
        assert sample(registry, "kannuki_lock_events_total", backend="memory", event="waiting") == 1
        assert sample(registry, "kannuki_lock_events_total", backend="memory", event="timeout") == 1
        assert sample(registry, "kannuki_lock_events_total", backend="memory", event="failed") == 1
        assert (
            sample(registry, "kannuki_lock_wait_seconds_count", backend="memory") == 2
        )  # acquired + timeout
        assert sample(registry, "kannuki_lock_wait_seconds_sum", backend="memory") >= 0.01
        assert sample(registry, "kannuki_lock_hold_seconds_count", backend="memory") == 1

    finally:
        uninstrument()


def test_uninstrument_stops_and_unregisters() -> None:
    """The returned function unsubscribes and removes the metrics, so instrument() can run again."""
    registry = prometheus_client.CollectorRegistry()
    uninstrument = instrument(registry)
    uninstrument()
    uninstrument()  # twice is harmless
    assert sample(registry, "kannuki_lock_events_total", backend="memory", event="acquired") is None
    with kannuki.Locker("memory://").lock(f"p-{uuid.uuid4().hex}"):
        pass
    assert list(registry.collect()) == []
    instrument(registry)()


def test_instrumenting_twice_on_one_registry_is_refused() -> None:
    """A second instrument() on the same registry raises ValueError and leaves the first intact."""
    registry = prometheus_client.CollectorRegistry()
    uninstrument = instrument(registry)
    try:
        with pytest.raises(ValueError, match="already registered"):
            instrument(registry)
        with kannuki.Locker("memory://").lock(f"p-{uuid.uuid4().hex}"):
            pass
        assert sample(registry, "kannuki_lock_events_total", backend="memory", event="acquired") == 1
    finally:
        uninstrument()


def test_default_registry() -> None:
    """With no registry given, the metrics go to prometheus_client's global REGISTRY."""
    uninstrument = instrument()
    try:
        assert (
            prometheus_client.REGISTRY.get_sample_value(
                "kannuki_lock_events_total", {"backend": "nothing", "event": "acquired"}
            )
            is None
        )
        names = {metric.name for metric in prometheus_client.REGISTRY.collect()}
        assert {"kannuki_lock_events", "kannuki_lock_wait_seconds", "kannuki_lock_hold_seconds"} <= names
    finally:
        uninstrument()


def test_clear_import_error_without_prometheus_client() -> None:
    """Without prometheus_client, importing the bridge names the extra kannuki[prometheus]."""
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    import kannuki.contrib.prometheus\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "kannuki[prometheus]" in out.stdout, out.stderr
