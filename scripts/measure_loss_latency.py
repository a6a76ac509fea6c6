#!/usr/bin/env python3
"""How long a lost lock takes to be noticed: from the loss to ``on_lost``, per store and mode.

For each store, sync (``Locker``) and async (``AsyncLocker``), it takes a lock, takes it away
from outside and times the moment ``on_lost`` runs, with no call by the holder:

- PostgreSQL: ``pg_terminate_backend`` of the holder's session (the watcher, default
  ``watch_interval=1.0``);
- MySQL/MariaDB: ``KILL`` of the holder's connection (the watcher, the same default);
- leases (memory with a ttl, sqlite, file, redis; etcd with ``--etcd-url``, or
  ``--etcd-cluster`` to start a private one): another locker
  deletes the lease (``force_release``), found by the next renewal (every ttl/3).

Each lock is held a random while (up to ``HOLD_SPREAD``) before it is taken away, so the loss
falls anywhere in the watcher's or the renewer's period; the clock starts when the removal has
returned. Prints a markdown table: median and worst of
``--samples`` (default 20) per row. A server that is not reachable is left out with a note.

    PYTHONPATH=src .venv/bin/python scripts/measure_loss_latency.py [--ttl 3] [--samples 20]
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import inspect
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kannuki

ON_LOST_BOUND = 15.0  # seconds: a sample that takes longer is reported as a failure
HOLD_SPREAD = 1.2  # seconds: the hold before the loss is drawn from [0.05, 0.05 + this]


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def pg_terminate(url: str) -> Callable[[Any], None]:
    import psycopg

    conn = psycopg.connect(url, autocommit=True)

    def take(lock: Any) -> None:
        conn.execute("SELECT pg_terminate_backend(%s)", (lock.grant.pid,))

    return take


def mysql_kill(url: str) -> Callable[[Any], None]:
    from urllib.parse import urlsplit

    import MySQLdb

    parts = urlsplit(url)
    conn = MySQLdb.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        autocommit=True,
    )

    def take(lock: Any) -> None:
        conn.query(b"KILL %d" % int(lock.grant.pid))

    return take


async def sample(cls: type, locker: Any, take: Callable[[Any], Any]) -> float:
    """One loss: seconds from the removal's return to on_lost."""
    noticed: list[float] = []
    lock = locker.lock(
        f"latency-{uuid.uuid4().hex[:8]}", on_lost=lambda lock, why: noticed.append(time.monotonic())
    )
    assert await maybe(lock.acquire(timeout=10)), "could not take the lock"
    # Held for a random while, so the loss falls anywhere within the watcher's or the renewer's period.
    await asyncio.sleep(random.uniform(0.05, 0.05 + HOLD_SPREAD))
    await maybe(take(lock))
    taken = time.monotonic()
    while not noticed and time.monotonic() - taken < ON_LOST_BOUND:
        await asyncio.sleep(0.002)  # the holder does nothing but wait
    if not noticed:
        raise RuntimeError(f"on_lost did not run within {ON_LOST_BOUND:g}s")
    try:
        await maybe(lock.release())
    except kannuki.LockLostError:
        pass
    return noticed[0] - taken


async def measure(
    cls: type, url: str, options: dict[str, Any], make_take: Callable[[], Any], samples: int
) -> list[float]:
    locker = cls(url, **options)
    take = make_take()
    try:
        return [await sample(cls, locker, take) for _ in range(samples)]
    finally:
        await maybe(locker.aclose() if cls is kannuki.AsyncLocker else locker.close())


def lease_taker(cls: type, url: str, options: dict[str, Any]) -> Callable[[], Callable[[Any], Any]]:
    """Another locker of the same kind that deletes the lease of a lock (force_release)."""

    def make() -> Callable[[Any], Any]:
        other = cls(url, **options)

        def take(lock: Any) -> Any:
            return other.force_release(lock.key)

        return take

    return make


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pg-url", default=os.environ.get("KANNUKI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument(
        "--mysql-url", default=os.environ.get("KANNUKI_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("KANNUKI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--etcd-url", default=os.environ.get("KANNUKI_TEST_ETCD_URL"))
    parser.add_argument(
        "--etcd-cluster",
        action="store_true",
        help="start a private 3-member etcd cluster (tests/etcd_cluster.py) for the etcd rows",
    )
    parser.add_argument("--ttl", type=float, default=3.0, help="the leases' ttl (renewed every ttl/3)")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument(
        "--stores", help="only these, comma-separated: postgresql, mysql, memory, sqlite, file, redis, etcd"
    )
    args = parser.parse_args()
    prefix = f"latency-{uuid.uuid4().hex[:6]}"
    if args.etcd_cluster and not args.etcd_url:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import etcd_cluster

        cluster = etcd_cluster.shared_cluster()
        atexit.register(etcd_cluster.release_shared)
        args.etcd_url = cluster.url(namespace=prefix)
    folder = tempfile.mkdtemp(prefix="kannuki-latency-")
    atexit.register(shutil.rmtree, folder, True)
    lease = {"ttl": args.ttl}
    rows: list[tuple[str, str, str, list[float] | str]] = []

    cases: list[tuple[str, str, str, dict[str, Any], Callable[[type], Callable[[], Any]]]] = [
        (
            "PostgreSQL",
            "pg_terminate_backend",
            args.pg_url,
            {"key_prefix": prefix},
            lambda cls: lambda: pg_terminate(args.pg_url),
        ),
        (
            "MySQL/MariaDB",
            "KILL",
            args.mysql_url,
            {"key_prefix": prefix},
            lambda cls: lambda: mysql_kill(args.mysql_url),
        ),
    ]
    for store, url, options in (
        ("memory (ttl)", f"memory://{prefix}", lease),
        ("sqlite", f"sqlite:///{folder}/latency.db", lease),
        ("file", f"file://{folder}/locks", lease),
        ("redis", args.redis_url, {**lease, "key_prefix": prefix}),
        *((("etcd", args.etcd_url, lease),) if args.etcd_url else ()),
    ):
        cases.append(
            (
                store,
                "lease deleted",
                url,
                options,
                lambda cls, url=url, options=options: lease_taker(cls, url, options),
            )
        )

    if args.stores:
        wanted = {name.strip().lower() for name in args.stores.split(",")}
        cases = [case for case in cases if case[0].split()[0].split("/")[0].lower() in wanted]
    for store, how, url, options, taker in cases:
        for mode, cls in (("sync", kannuki.Locker), ("async", kannuki.AsyncLocker)):
            try:
                result: list[float] | str = asyncio.run(measure(cls, url, options, taker(cls), args.samples))
            except Exception as exc:  # an absent server: say so in its row
                result = f"not measured: {type(exc).__name__}: {' '.join(str(exc).split())}"
            rows.append((store, mode, how, result))
            print(f"measured {store} {mode}", file=sys.stderr, flush=True)

    print(
        f"Loss noticed (seconds from the loss to on_lost), {args.samples} samples each; leases with ttl={args.ttl:g}"
    )
    print(f"(renewed every {args.ttl / 3:g}s); PostgreSQL and MySQL with the default watch_interval=1.0.\n")
    print("| store | mode | lock taken away by | median | worst |")
    print("|---|---|---|---:|---:|")
    for store, mode, how, result in rows:
        if isinstance(result, str):
            print(f"| {store} | {mode} | {how} | {result} | |")
        else:
            print(f"| {store} | {mode} | {how} | {statistics.median(result):.3f} s | {max(result):.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
