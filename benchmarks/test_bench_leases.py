"""The machine-local lease stores (sqlite:///, file:///): uncontended acquire+release vs floor and peers.

Every contender does OPS acquire+release pairs per round on one key it set up beforehand.
Floors: sqlite -- the raw sqlite3 module doing the same durable work as kannuki on one open
connection with the same pragmas (WAL, synchronous=NORMAL): BEGIN IMMEDIATE, count the key's token
counter on (an upsert with RETURNING), INSERT the lease row, COMMIT, then DELETE it by name and
token; file -- fcntl.flock LOCK_EX|LOCK_NB,
one pwrite of a holder record and LOCK_UN on one open descriptor (a lock that says who holds it
and writes a token somewhere costs at least that). Peers: filelock and portalocker (both
flock-based here). SPEC §7: sqlite within 1.5x of its floor, the file store within 3x of its.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

import kannuki
from bench_support import Round, pairs, peer_filelock, peer_portalocker

OPS = 20


def _floor_sqlite3(tmp_path: Path, prefix: str) -> Round:
    conn = sqlite3.connect(str(tmp_path / "floor.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE leases (name TEXT PRIMARY KEY, token INTEGER NOT NULL, pid INTEGER, host TEXT,"
        " acquired_at REAL NOT NULL, expires_at REAL NOT NULL) WITHOUT ROWID"
    )
    conn.execute("CREATE TABLE tokens (name TEXT PRIMARY KEY, last_token INTEGER NOT NULL) WITHOUT ROWID")
    upsert = (
        "INSERT INTO tokens VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET last_token = last_token + 1"
        " RETURNING last_token"
    )
    pid, host, token = os.getpid(), "bench-host", [0]

    def acquire() -> None:
        conn.execute("BEGIN IMMEDIATE")
        ((token[0],),) = conn.execute(upsert, ("k",)).fetchall()
        conn.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?, ?)", ("k", token[0], pid, host, 1.0, 31.0))
        conn.execute("COMMIT")

    def release() -> None:
        conn.execute("DELETE FROM leases WHERE name = ? AND token = ?", ("k", token[0]))

    return pairs(acquire, release, OPS)


# A holder record of the size kannuki writes (token, times, pid, host, name).
_RECORD = (
    b'{"token":1764633600000000,"since_us":1764633600000000,"expires_us":1764633630000000,'
    b'"pid":4242,"host":"bench-host","name":"bench-0123abcd:uncontended"}\n'
)


def _floor_flock_pwrite(tmp_path: Path, prefix: str) -> Round:
    fd = os.open(str(tmp_path / "floor.lock"), os.O_RDWR | os.O_CREAT)
    lock, unlock = fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN
    flock, pwrite = fcntl.flock, os.pwrite

    def acquire() -> None:
        flock(fd, lock)
        pwrite(fd, _RECORD, 0)

    return pairs(acquire, lambda: flock(fd, unlock), OPS)


def _kannuki(url: str) -> Callable[[Path, str], Round]:
    def make(tmp_path: Path, prefix: str) -> Round:
        locker = kannuki.Locker(url.format(tmp=tmp_path), key_prefix=prefix)
        lock = locker.lock("uncontended")
        return pairs(lambda: lock.acquire(blocking=False) or pytest.fail("not acquired"), lock.release, OPS)

    return make


PEERS = [
    pytest.param(lambda tmp, prefix: peer_filelock(tmp / "peer.lock", OPS), id="peer-filelock"),
    pytest.param(lambda tmp, prefix: peer_portalocker(tmp / "peer.lock", OPS), id="peer-portalocker"),
]


@pytest.mark.parametrize(
    "make_round",
    [
        pytest.param(_floor_sqlite3, id="floor-sqlite3"),
        pytest.param(_kannuki("sqlite:///{tmp}/locks.db"), id="kannuki-sqlite"),
        *PEERS,
    ],
)
def test_sqlite_uncontended(benchmark, make_round, tmp_path: Path, key_prefix: str) -> None:
    """OPS uncontended acquire+release pairs per round on the sqlite store vs its floor and peers."""
    run = make_round(tmp_path, key_prefix)
    benchmark.group = f"sqlite: uncontended acquire+release x{OPS}"
    benchmark(run)


@pytest.mark.parametrize(
    "make_round",
    [
        pytest.param(_floor_flock_pwrite, id="floor-flock+pwrite"),
        pytest.param(_kannuki("file://{tmp}/locks"), id="kannuki-file"),
        *PEERS,
    ],
)
def test_file_uncontended(benchmark, make_round, tmp_path: Path, key_prefix: str) -> None:
    """OPS uncontended acquire+release pairs per round on the file store vs its floor and peers."""
    run = make_round(tmp_path, key_prefix)
    benchmark.group = f"file: uncontended acquire+release x{OPS}"
    benchmark(run)
