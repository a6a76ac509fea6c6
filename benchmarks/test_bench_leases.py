"""The machine-local lease stores (sqlite:///, file:///): uncontended acquire+release vs floor and peers.

Every contender does OPS acquire+release pairs per round on one key it set up beforehand.
Floors: sqlite -- the raw sqlite3 module doing BEGIN IMMEDIATE / INSERT / COMMIT then DELETE
on one open WAL connection (what a lease row costs at least); file -- fcntl.flock LOCK_EX|LOCK_NB
and LOCK_UN on one open descriptor. Peers: filelock and portalocker (both flock-based here).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Callable

import pytest

import kannuki
from bench_support import Round, pairs, peer_filelock, peer_portalocker

OPS = 20


def _floor_sqlite3(tmp_path: Path, prefix: str) -> Round:
    conn = sqlite3.connect(str(tmp_path / "floor.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE leases (name TEXT PRIMARY KEY, expires_at REAL) WITHOUT ROWID")

    def acquire() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO leases VALUES (?, ?)", ("k", 1.0))
        conn.execute("COMMIT")

    def release() -> None:
        conn.execute("DELETE FROM leases WHERE name = ?", ("k",))

    return pairs(acquire, release, OPS)


def _floor_flock(tmp_path: Path, prefix: str) -> Round:
    fd = os.open(str(tmp_path / "floor.lock"), os.O_RDWR | os.O_CREAT)
    lock, unlock = fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN
    return pairs(lambda: fcntl.flock(fd, lock), lambda: fcntl.flock(fd, unlock), OPS)


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
        pytest.param(_floor_flock, id="floor-fcntl.flock"),
        pytest.param(_kannuki("file://{tmp}/locks"), id="kannuki-file"),
        *PEERS,
    ],
)
def test_file_uncontended(benchmark, make_round, tmp_path: Path, key_prefix: str) -> None:
    """OPS uncontended acquire+release pairs per round on the file store vs its floor and peers."""
    run = make_round(tmp_path, key_prefix)
    benchmark.group = f"file: uncontended acquire+release x{OPS}"
    benchmark(run)
