"""kannuki.contrib.otel: lock events as OpenTelemetry spans and metrics, read back with the SDK's in-memory exporters."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import kannuki

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from kannuki.contrib.otel import instrument
from support import subprocess_env


class Recorder:
    """A tracer provider and a meter provider of the SDK, each with an in-memory reader."""

    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def finished(self, key: str) -> list[Any]:
        return [s for s in self.spans.get_finished_spans() if s.attributes.get("kannuki.lock.key") == key]

    def points(self, name: str) -> list[Any]:
        """The data points of metric ``name`` (every attribute set), as the reader collects them now."""
        data = self.reader.get_metrics_data()
        out = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        assert scope.scope.name == "kannuki"
                        out.extend(metric.data.data_points)
        return out

    def metric(self, name: str) -> Any:
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        return metric
        raise AssertionError(f"no metric {name}")


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """kannuki instrumented into fresh SDK providers for the test, uninstrumented after."""
    rec = Recorder()
    uninstrument = instrument(tracer_provider=rec.tracer_provider, meter_provider=rec.meter_provider)
    try:
        yield rec
    finally:
        uninstrument()


def memory_url() -> str:
    return f"memory://otel-{uuid.uuid4().hex[:8]}"


def test_acquire_and_hold_spans_with_attributes(recorder: Recorder) -> None:
    """An acquired lock gives an acquire span and, once released, a hold span, with key, store, token, durations."""
    locker = kannuki.Locker(memory_url())
    with locker.lock("s") as lock:
        token = lock.token
    acquire, hold = recorder.finished("s")
    assert acquire.name == "kannuki.lock.acquire" and hold.name == "kannuki.lock.hold"
    assert acquire.attributes["kannuki.lock.outcome"] == "acquired"
    assert acquire.attributes["kannuki.lock.store"] == "memory"
    assert acquire.attributes["kannuki.lock.token"] == token
    assert acquire.attributes["kannuki.lock.id"] == lock.lock_id
    assert acquire.attributes["kannuki.lock.shared"] is False
    assert acquire.attributes["kannuki.lock.wait.duration"] >= 0
    assert hold.attributes["kannuki.lock.outcome"] == "released"
    assert hold.attributes["kannuki.lock.hold.duration"] >= 0
    assert hold.start_time <= hold.end_time and acquire.end_time <= hold.end_time
    assert acquire.status.status_code is StatusCode.UNSET and hold.status.status_code is StatusCode.UNSET


def test_timeout_and_try_spans_and_counters(recorder: Recorder) -> None:
    """A timed-out wait is an error span (error.type timeout); a refused try is not; both count as failed."""
    locker = kannuki.Locker(memory_url())
    with locker.lock("t"):
        assert not locker.lock("t", timeout=0.01).acquire()
        assert not locker.lock("t").acquire(blocking=False)
    spans = recorder.finished("t")
    outcomes = [s.attributes["kannuki.lock.outcome"] for s in spans]
    assert outcomes == ["acquired", "timeout", "failed", "released"]
    timed_out, refused = spans[1], spans[2]
    assert timed_out.status.status_code is StatusCode.ERROR
    assert timed_out.attributes["error.type"] == "timeout"
    assert timed_out.attributes["kannuki.lock.wait.duration"] >= 0.01
    assert (timed_out.end_time - timed_out.start_time) >= 0.01e9
    assert "kannuki.lock.token" not in timed_out.attributes
    assert refused.status.status_code is StatusCode.UNSET and "error.type" not in refused.attributes

    failed = {p.attributes["kannuki.lock.outcome"]: p.value for p in recorder.points("kannuki.lock.failed")}
    assert failed == {"timeout": 1, "failed": 1}
    assert [p.value for p in recorder.points("kannuki.lock.acquired")] == [1]
    waits = {
        p.attributes["kannuki.lock.outcome"]: p.count for p in recorder.points("kannuki.lock.wait.duration")
    }
    assert waits == {"acquired": 1, "timeout": 1, "failed": 1}
    assert [p.count for p in recorder.points("kannuki.lock.hold.duration")] == [1]
    for point in recorder.points("kannuki.lock.acquired"):
        assert "kannuki.lock.key" not in point.attributes  # metrics never carry the key (cardinality)
    assert recorder.metric("kannuki.lock.wait.duration").unit == "s"
    assert recorder.metric("kannuki.lock.hold.duration").unit == "s"


def test_lost_lock_is_an_error_hold_span_and_counted(recorder: Recorder) -> None:
    """A lease taken away (force_release) is a lost hold: an error span and the lost counter."""
    url = memory_url()
    locker = kannuki.Locker(url, auto_renew=False)
    lock = locker.lock("l", ttl=60)
    lock.acquire()
    assert kannuki.Locker(url).force_release("l") == 1
    with pytest.raises(kannuki.LockLostError):
        lock.release()
    hold = recorder.finished("l")[-1]
    assert hold.name == "kannuki.lock.hold" and hold.attributes["kannuki.lock.outcome"] == "lost"
    assert hold.status.status_code is StatusCode.ERROR and hold.attributes["error.type"] == "lost"
    assert [p.value for p in recorder.points("kannuki.lock.lost")] == [1]
    holds = {
        p.attributes["kannuki.lock.outcome"]: p.count for p in recorder.points("kannuki.lock.hold.duration")
    }
    assert holds == {"lost": 1}


def test_async_locker_spans(recorder: Recorder) -> None:
    """An AsyncLocker's events make the same spans, shared locks marked as such."""

    async def main() -> None:
        locker = kannuki.AsyncLocker(memory_url())
        async with locker.lock("a", shared=True):
            pass
        await locker.aclose()

    asyncio.run(main())
    acquire, hold = recorder.finished("a")
    assert (acquire.name, hold.name) == ("kannuki.lock.acquire", "kannuki.lock.hold")
    assert acquire.attributes["kannuki.lock.shared"] is True


def test_acquire_span_is_a_child_of_the_callers_span(recorder: Recorder) -> None:
    """The acquire span is recorded in the caller's context: it nests under the span around the lock."""
    tracer = recorder.tracer_provider.get_tracer("test")
    locker = kannuki.Locker(memory_url())
    with tracer.start_as_current_span("job") as job, locker.lock("c"):
        pass
    acquire, hold = recorder.finished("c")
    assert acquire.parent is not None and acquire.parent.span_id == job.get_span_context().span_id
    assert hold.parent is not None and hold.parent.span_id == job.get_span_context().span_id


def test_uninstrument_stops_and_allows_again() -> None:
    """The returned function stops recording; instrumenting the same providers twice at once is refused."""
    rec = Recorder()
    uninstrument = instrument(tracer_provider=rec.tracer_provider, meter_provider=rec.meter_provider)
    with pytest.raises(ValueError, match="already records"):
        instrument(tracer_provider=rec.tracer_provider, meter_provider=rec.meter_provider)
    uninstrument()
    uninstrument()  # twice is harmless
    locker = kannuki.Locker(memory_url())
    with locker.lock("u"):
        pass
    assert rec.finished("u") == []
    instrument(tracer_provider=rec.tracer_provider, meter_provider=rec.meter_provider)()


def test_without_opentelemetry_the_import_names_the_extra(tmp_path: Any) -> None:
    """Without opentelemetry importable, importing the bridge says which extra to install."""
    blocker = tmp_path / "opentelemetry"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", "import kannuki.contrib.otel"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode != 0
    assert "kannuki[otel]" in result.stderr
