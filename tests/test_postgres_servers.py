"""PostgreSQL behind what the shared server is not: a hot standby, and PgBouncer in transaction mode.

Each fixture starts an instance of its OWN and stops it afterwards, never touching the shared
server's configuration: a primary and its streaming standby (initdb and pg_basebackup under /tmp,
on free ports), and a pgbouncer (pool_mode=transaction, auth_type=trust) on a free port in front of
the shared server. The binaries come from Debian's postgresql and pgbouncer packages (scripts/test
installs them); when one is missing the tests skip, or fail under KANNUKI_REQUIRE_DBS=1 like the
other server fixtures. As root, the servers run as the postgres user (neither runs as root).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import kannuki
from kannuki.backends import _pg_sql as sql
from kannuki.errors import ConfigurationError, LockLostError
from pg_instance import (
    SERVER_USER,
    accepting,
    as_server_user,
    free_port,
    missing,
    pg_bindir,
    run,
    server_dir,
)

psycopg = pytest.importorskip("psycopg")

# The helpers of a server of the test's own live in pg_instance (shared with test_frozen_postgres).
_missing, _as_server_user, _server_dir, _free_port = missing, as_server_user, server_dir, free_port
_run, _pg_bindir, _accepting = run, pg_bindir, accepting


# -- a primary and its hot standby ------------------------------------------------------


@pytest.fixture(scope="module")
def standby_pair() -> Iterator[tuple[str, str]]:
    """(primary URL, standby URL): a fresh primary and a streaming hot standby of it, stopped after."""
    bindir = _pg_bindir()
    if bindir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        _missing("the PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) are not installed")
        raise AssertionError("unreachable")
    base = _server_dir("kannuki-standby-")
    ports = _free_port(), _free_port()
    dirs = base / "primary", base / "standby"
    started: list[Path] = []
    try:
        _run(
            _as_server_user(
                [str(bindir / "initdb"), "-D", str(dirs[0]), "-U", "postgres", "--auth=trust", "-N"]
            ),
            "initdb",
        )
        settings = "-c listen_addresses=127.0.0.1 -c fsync=off -c unix_socket_directories={base}"
        for index, (data, port) in enumerate(zip(dirs, ports, strict=True)):
            if index == 1:  # the standby: a base backup of the running primary, set to follow it (-R)
                _run(
                    _as_server_user(
                        [
                            str(bindir / "pg_basebackup"),
                            *("-h", "127.0.0.1", "-p", str(ports[0]), "-U", "postgres"),
                            *("-D", str(data), "-R", "-X", "stream"),
                        ]
                    ),
                    "pg_basebackup",
                )
            options = f"-p {port} " + settings.format(base=base)
            _run(
                _as_server_user(
                    [
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-l",
                        f"{data}.log",
                        "-o",
                        options,
                        "-w",
                        "start",
                    ]
                ),
                f"starting the {data.name}",
            )
            started.append(data)
        primary, standby = (f"postgresql://postgres@127.0.0.1:{port}/postgres" for port in ports)
        assert _accepting(primary) and _accepting(standby), "the primary or the standby did not come up"
        with psycopg.connect(standby) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        yield primary, standby
    finally:
        for data in reversed(started):
            subprocess.run(
                _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)


def test_item_10_a_transaction_lock_on_a_standby_is_refused(standby_pair: tuple[str, str]) -> None:
    """transaction= on a hot standby is refused like a session lock (it excludes nobody on the primary)."""
    _, standby = standby_pair
    prefix = f"t-pg-{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(standby, autocommit=True)
    url_locker = kannuki.Locker(standby, key_prefix=prefix)
    conn_locker = kannuki.Locker(conn, key_prefix=prefix)
    try:
        with pytest.raises(ConfigurationError, match="allow_replica=True"):
            url_locker.lock("k").acquire(timeout=1)  # session locks: refused already
        with conn.transaction():
            with pytest.raises(ConfigurationError, match="allow_replica=True"):
                url_locker.lock("k", transaction=conn).acquire(timeout=1)
            with pytest.raises(ConfigurationError, match="allow_replica=True"):
                conn_locker.lock("k", transaction=True).acquire(timeout=1)
            assert (
                conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0] == 0
            )
    finally:
        url_locker.close()
        conn_locker.close()
        conn.close()


def test_item_10_held_and_holders_through_a_standby_are_refused(standby_pair: tuple[str, str]) -> None:
    """held()/holders()/list_held() through a standby see none of the primary's locks: refused, unless allowed."""
    primary, standby = standby_pair
    prefix = f"t-pg-{uuid.uuid4().hex[:8]}"
    on_primary = kannuki.Locker(primary, key_prefix=prefix)
    on_standby = kannuki.Locker(standby, key_prefix=prefix)
    allowed = kannuki.Locker(standby, key_prefix=prefix, allow_replica=True)
    try:
        with on_primary.lock("k"):
            assert on_primary.held("k")
            for ask in (lambda: on_standby.held("k"), on_standby.lock("k").holders, on_standby.list_held):
                with pytest.raises(ConfigurationError, match="allow_replica=True"):
                    ask()
            assert allowed.held("k") is False  # allowed: it answers for what the standby sees
    finally:
        on_primary.close()
        on_standby.close()
        allowed.close()


def test_item_10_async_standby_refusals(standby_pair: tuple[str, str]) -> None:
    """The same refusals through AsyncLocker: transaction= on a standby, and held()/holders()."""
    primary, standby = standby_pair
    prefix = f"t-pg-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(standby, autocommit=True)
        on_primary = kannuki.AsyncLocker(primary, key_prefix=prefix)
        on_standby = kannuki.AsyncLocker(standby, key_prefix=prefix)
        try:
            async with conn.transaction():
                with pytest.raises(ConfigurationError, match="allow_replica=True"):
                    await on_standby.lock("k", transaction=conn).acquire(timeout=1)
            async with on_primary.lock("k"):
                with pytest.raises(ConfigurationError, match="allow_replica=True"):
                    await on_standby.held("k")
                with pytest.raises(ConfigurationError, match="allow_replica=True"):
                    await on_standby.lock("k").holders()
        finally:
            await on_primary.aclose()
            await on_standby.aclose()
            await conn.close()

    asyncio.run(main())


def test_item_4_a_standby_gives_no_tokens_and_one_warning(standby_pair: tuple[str, str]) -> None:
    """allow_replica=True on a standby: no sequence can advance there, so lock.token is None; one warning says so."""
    _, standby = standby_pair
    locker = kannuki.Locker(standby, key_prefix=f"t-pg-{uuid.uuid4().hex[:8]}", allow_replica=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokens = []
            for _ in range(3):
                with locker.lock("k") as lock:
                    tokens.append(lock.token)
        assert [str(w.message) for w in caught if "fencing" in str(w.message)] == [
            str(caught[0].message)
        ] and "standby" in str(caught[0].message)
        assert locker.backend.tokens_fenced is False
        assert tokens == [None, None, None]
    finally:
        locker.close()


# -- PgBouncer in transaction mode --------------------------------------------------------


@pytest.fixture
def bouncer_url(pg_url: str) -> Iterator[str]:
    """A pgbouncer of this test's own (transaction mode, trust) in front of the shared server; stopped after."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if binary is None:
        _missing("pgbouncer is not installed")
        raise AssertionError("unreachable")
    server = urlsplit(pg_url)
    database = server.path.lstrip("/") or "postgres"
    user = server.username or "postgres"
    base = _server_dir("kannuki-pgbouncer-")
    port = _free_port()
    (base / "userlist.txt").write_text(f'"{user}" ""\n')
    (base / "pgbouncer.ini").write_text(
        f"""[databases]
{database} = host={server.hostname} port={server.port or 5432} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {base}/userlist.txt
pool_mode = transaction
default_pool_size = 10
logfile = {base}/pgbouncer.log
pidfile = {base}/pgbouncer.pid
"""
    )
    if os.geteuid() == 0:
        for name in ("userlist.txt", "pgbouncer.ini"):
            shutil.chown(base / name, SERVER_USER, SERVER_USER)
    command = [binary, "-d", str(base / "pgbouncer.ini")]
    if os.geteuid() == 0:
        command[1:1] = ["-u", SERVER_USER]  # pgbouncer refuses to run as root: it switches user itself
    url = f"postgresql://{user}@127.0.0.1:{port}/{database}"
    try:
        _run(command, "starting pgbouncer")
        assert _accepting(url), f"pgbouncer did not come up: {(base / 'pgbouncer.log').read_text()[-2000:]}"
        yield url
    finally:
        pidfile = base / "pgbouncer.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)


def test_item_11_url_lockers_work_through_pgbouncer(bouncer_url: str) -> None:
    """Two URL lockers take turns through PgBouncer: no "prepared statement _pg3_0 already exists", and the
    fencing tokens (nextval through the pooler) still increase."""
    prefix = f"t-pg-{uuid.uuid4().hex[:8]}"
    a, b = kannuki.Locker(bouncer_url, key_prefix=prefix), kannuki.Locker(bouncer_url, key_prefix=prefix)
    try:
        tokens = []
        for _ in range(20):
            for locker in (a, b):
                with locker.lock("k", timeout=10) as lock:
                    tokens.append(lock.token)
                    session = lock.grant.conn
        assert tokens == sorted(set(tokens))
        assert session.direct is False  # the pooler was noticed: nothing was prepared on it
    finally:
        a.close()
        b.close()


def test_item_11_transaction_locks_through_pgbouncer_with_psycopg_defaults(bouncer_url: str) -> None:
    """Transaction-level locks on users' connections (psycopg's defaults) through PgBouncer, two at a time."""
    prefix = f"t-pg-{uuid.uuid4().hex[:8]}"
    conns = [psycopg.connect(bouncer_url) for _ in range(2)]
    locker = kannuki.Locker(bouncer_url, key_prefix=prefix)
    errors: list[BaseException] = []

    def work(conn: Any, name: str) -> None:
        try:
            for round_ in range(40):
                with conn.transaction():  # (only kannuki's statements: the user's own follow psycopg's
                    # prepare_threshold, whose default of 5 a pooler cannot serve either)
                    with locker.lock(f"{name}-{round_ % 3}", transaction=conn, timeout=10):
                        pass
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(conn, f"c{i}")) for i, conn in enumerate(conns)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
    finally:
        locker.close()
        for conn in conns:
            conn.close()


def test_item_11_async_url_locker_works_through_pgbouncer(bouncer_url: str) -> None:
    """AsyncLocker through PgBouncer: two lockers taking turns, no prepared-statement clash."""
    prefix = f"t-pg-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        a, b = (kannuki.AsyncLocker(bouncer_url, key_prefix=prefix) for _ in range(2))
        try:
            tokens = []
            for _ in range(20):
                for locker in (a, b):
                    async with locker.lock("k", timeout=10) as lock:
                        tokens.append(lock.token)
            assert tokens == sorted(set(tokens))
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())


def _moved_session(bouncer_url: str) -> tuple[Any, int]:
    """A raw client of the pooler that opens a transaction (so pins an idle server backend): (conn, its PID)."""
    raw = psycopg.connect(bouncer_url)  # not autocommit: the SELECT opens a transaction and keeps the backend
    return raw, int(raw.execute("SELECT pg_backend_pid()").fetchone()[0])


def test_item_11_a_moved_session_frees_the_lock_where_it_was_taken(bouncer_url: str, pg_conn: Any) -> None:
    """The release lands on another server backend (a pooler in transaction mode moved the session): it is
    LockLostError, and the lock does not stay held on the backend it was taken on."""
    locker = kannuki.Locker(bouncer_url, key_prefix=f"t-pg-{uuid.uuid4().hex[:8]}")
    raw = None
    try:
        lock = locker.lock("moved")
        assert lock.acquire(timeout=10)
        taken_on = lock.grant.pid
        raw, pinned = _moved_session(bouncer_url)  # the backend the lock is on, now busy in raw's transaction
        assert pinned == taken_on, "pgbouncer gave the raw client another backend: cannot stage the move"
        with pytest.raises(LockLostError, match="moved the session") as info:
            lock.release()
        assert f"ended server session {taken_on}" in str(info.value)
        classid, objid = sql.split_lock_id(lock.lock_id)
        rows = pg_conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::bigint::oid"
            " AND objid = %s::bigint::oid",
            [classid, objid],
        ).fetchone()[0]
        assert rows == 0  # not left on the pooler's server session for its next clients
    finally:
        locker.close()
        if raw is not None:
            raw.close()


def test_item_11_async_moved_session_frees_the_lock_where_it_was_taken(
    bouncer_url: str, pg_conn: Any
) -> None:
    """The same through AsyncLocker."""

    async def main() -> None:
        locker = kannuki.AsyncLocker(bouncer_url, key_prefix=f"t-pg-{uuid.uuid4().hex[:8]}")
        raw = None
        try:
            lock = locker.lock("moved")
            assert await lock.acquire(timeout=10)
            taken_on = lock.grant.pid
            raw, pinned = _moved_session(bouncer_url)
            assert pinned == taken_on, "pgbouncer gave the raw client another backend: cannot stage the move"
            with pytest.raises(LockLostError, match="moved the session") as info:
                await lock.release()
            assert f"ended server session {taken_on}" in str(info.value)
            classid, objid = sql.split_lock_id(lock.lock_id)
            rows = pg_conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::bigint::oid"
                " AND objid = %s::bigint::oid",
                [classid, objid],
            ).fetchone()[0]
            assert rows == 0
        finally:
            await locker.aclose()
            if raw is not None:
                raw.close()

    asyncio.run(main())
