"""etcd: uncontended try-acquire + release, and a contended 4-process run, on a real 3-member cluster.

- floor: the same requests by hand, over the v3 JSON gateway with ``http.client`` on one
  kept-alive connection: grant a lease, the conditional-put transaction, then the delete guarded
  by our create revision and the lease's revoke (four round trips, as kannuki); contended, the
  same queue-and-watch recipe (put, read the predecessor, watch it until deleted);
- kannuki: ``Locker("etcd://m1,m2,m3").lock(key)`` with its defaults (a lease per acquisition,
  the holder record, the hold owner's renewal bookkeeping, failover between members);
- peer: tooz's etcd3gw driver, when the ``etcd3gw`` package is installed. It is not part of the
  ``bench`` extra (that is tooz alone, which needs it for etcd), so that entry skips there; tooz's
  grpc ``etcd3`` driver is not used (its client package is unmaintained and needs grpc).

The cluster is the tests' (tests/etcd_cluster.py), started for the session on loopback.
Run: ``.venv/bin/python -m pytest benchmarks/test_bench_etcd.py --benchmark-only``
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import kannuki
from bench_support import time_contended, try_and_release
from servers import etcd_cluster  # noqa: F401 (the session's cluster, a fixture)

TTL = 30


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class Gateway:
    """The floor's client: one kept-alive HTTP connection to one member, JSON in and out."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=10)

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.conn.request("POST", path, json.dumps(payload), {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        reply: dict[str, Any] = json.loads(response.read().split(b"\n", 1)[0])
        assert response.status == 200, reply
        return reply

    def wait_deleted(self, key64: str, start_revision: int) -> None:
        """Watch one key from ``start_revision`` until it is deleted (a connection of its own)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            request = {
                "create_request": {"key": key64, "start_revision": str(start_revision), "filters": ["NOPUT"]}
            }
            conn.request("POST", "/v3/watch", json.dumps(request), {"Content-Type": "application/json"})
            response = conn.getresponse()
            while True:
                line = response.readline()
                assert line, "the watch ended"
                result = json.loads(line)["result"]
                if any(event.get("type") == "DELETE" for event in result.get("events", ())):
                    return
        finally:
            conn.close()

    def close(self) -> None:
        self.conn.close()


class FloorLock:
    """etcd's lock recipe by hand: the requests kannuki sends, without anything around them."""

    def __init__(self, gateway: Gateway, prefix: str) -> None:
        self.gateway = gateway
        self.dir = prefix.encode() + b"/"
        self.free = {
            "key": b64(self.dir),
            "range_end": b64(prefix_end(self.dir)),
            "target": "CREATE",
            "result": "EQUAL",
            "create_revision": "0",
        }
        self.lease = 0
        self.key64 = ""
        self.revision = 0

    def acquire(self, blocking: bool = True) -> bool:
        post = self.gateway.post
        self.lease = secrets.randbits(63) or 1
        self.key64 = b64(self.dir + f"w/{self.lease:016x}".encode())
        post("/v3/lease/grant", {"ID": str(self.lease), "TTL": str(TTL)})
        put = {"request_put": {"key": self.key64, "value": b64(b"floor"), "lease": str(self.lease)}}
        reply = post(
            "/v3/kv/txn", {"compare": [self.free], "success": [put], "failure": [put] if blocking else []}
        )
        self.revision = int(reply["header"]["revision"])
        if reply.get("succeeded"):
            return True
        if not blocking:
            post("/v3/lease/revoke", {"ID": str(self.lease)})
            return False
        while True:
            before = {
                "key": b64(self.dir),
                "range_end": b64(prefix_end(self.dir)),
                "max_create_revision": str(self.revision - 1),
                "sort_order": "DESCEND",
                "sort_target": "CREATE",
                "limit": "1",
                "keys_only": True,
            }
            ahead = post("/v3/kv/range", before)
            if not ahead.get("kvs"):
                return True
            self.gateway.wait_deleted(ahead["kvs"][0]["key"], int(ahead["header"]["revision"]) + 1)

    def release(self) -> None:
        mine = {
            "key": self.key64,
            "target": "CREATE",
            "result": "EQUAL",
            "create_revision": str(self.revision),
        }
        reply = self.gateway.post(
            "/v3/kv/txn", {"compare": [mine], "success": [{"request_delete_range": {"key": self.key64}}]}
        )
        assert reply.get("succeeded")
        self.gateway.post("/v3/lease/revoke", {"ID": str(self.lease)})


def _floor(cluster: Any, namespace: str) -> tuple[Callable[[], None], Callable[[], None]]:
    gateway = Gateway(cluster.members[0].address)
    lock = FloorLock(gateway, f"{namespace}/lock/key")

    def once() -> None:
        assert lock.acquire(blocking=False)
        lock.release()

    return once, gateway.close


def _kannuki(cluster: Any, namespace: str) -> tuple[Callable[[], None], Callable[[], None]]:
    locker = kannuki.Locker(cluster.url(namespace=namespace), ttl=TTL)
    return try_and_release(locker.lock("key")), locker.close


def _tooz(cluster: Any, namespace: str) -> tuple[Callable[[], None], Callable[[], None]]:
    pytest.importorskip(
        "etcd3gw", reason="tooz's etcd3gw driver needs the etcd3gw package (not in the bench extra)"
    )
    coordination = pytest.importorskip("tooz.coordination")
    host, port = cluster.members[0].address.rsplit(":", 1)
    coordinator = coordination.get_coordinator(
        f"etcd3+http://{host}:{port}?timeout={TTL}", f"bench-{uuid.uuid4().hex[:6]}".encode()
    )
    coordinator.start()
    return try_and_release(coordinator.get_lock(f"{namespace}-key".encode())), coordinator.stop


CONTENDERS = {"floor-gateway": _floor, "kannuki-url": _kannuki, "peer-tooz-etcd3gw": _tooz}


@pytest.fixture
def namespace(etcd_cluster: Any, key_prefix: str) -> Iterator[str]:  # noqa: F811 (the fixture above)
    """A key namespace for one benchmark, deleted afterwards."""
    yield key_prefix
    etcd_cluster.post(
        "/v3/kv/deleterange",
        {"key": b64(key_prefix.encode()), "range_end": b64(prefix_end(key_prefix.encode()))},
    )


@pytest.fixture
def contender(
    request: pytest.FixtureRequest,
    etcd_cluster: Any,  # noqa: F811 (the fixture above)
    namespace: str,
) -> Iterator[Callable[[], None]]:
    once, close = CONTENDERS[request.param](etcd_cluster, namespace)
    for _ in range(3):  # connect outside the measurement
        once()
    yield once
    close()


@pytest.mark.parametrize("contender", list(CONTENDERS), indirect=True)
def test_uncontended_try_acquire_release(benchmark: Any, contender: Callable[[], None]) -> None:
    """Grant + conditional put, guarded delete + revoke: one free key, uncontended."""
    benchmark.group = "etcd: uncontended try-acquire+release"
    benchmark(contender)


def _worker(
    kind: str, url: str, address: str, namespace: str, counter: str, rounds: int, **shot: Any
) -> None:
    key, ready, start = shot["key"], shot["ready"], shot["start"]
    if kind == "floor-gateway":
        gateway = Gateway(address)
        floor = FloorLock(gateway, f"{namespace}/lock/{key}")
        acquire: Callable[[], object] = floor.acquire
        release: Callable[[], object] = floor.release
    else:
        locker = kannuki.Locker(url, ttl=TTL)
        lock = locker.lock(key, timeout=60)
        acquire, release = lock.acquire, lock.release
    acquire()  # connect before the clock starts
    release()
    ready.wait(30)
    start.wait(30)
    path = Path(counter)
    for _ in range(rounds):
        acquire()
        value = int(path.read_text() or 0)
        path.write_text(str(value + 1))
        release()


@pytest.mark.parametrize("kind", ["floor-gateway", "kannuki-url"])
def test_contended_four_processes(
    benchmark: Any,
    etcd_cluster: Any,  # noqa: F811 (the fixture above)
    namespace: str,
    tmp_path: Path,
    kind: str,
) -> None:
    """4 processes, one key, read-modify-write of a file under the lock; no lost update."""
    benchmark.group = "etcd: contended 4 processes x 25 read-modify-writes"
    counter = tmp_path / "counter"
    counter.write_text("0")
    rounds = 25
    url = etcd_cluster.url(namespace=namespace)
    args = (kind, url, etcd_cluster.members[0].address, namespace, str(counter), rounds)
    runs = time_contended(benchmark, _worker, args, rounds=3)
    # Each run starts on a fresh key; the counter file goes on across runs.
    assert int(counter.read_text()) == 4 * rounds * runs  # no lost update
