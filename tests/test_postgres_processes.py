"""PostgreSQL backend across processes: no lost update under the lock; a killed holder frees it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from typing import Any

import pytest

import kannuki
from support import join_all

psycopg = pytest.importorskip("psycopg")

SPAWN = multiprocessing.get_context("spawn")
INCREMENTS = 50


def increment_under_lock(url: str, prefix: str, table: str, count: int) -> None:
    """Worker: read-modify-write one row ``count`` times, each under the lock."""
    locker = kannuki.Locker(url, key_prefix=prefix)
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(count):
            with locker.lock("counter", timeout=60):
                value = conn.execute(f"SELECT n FROM {table} WHERE id = 1").fetchone()[0]
                conn.execute(f"UPDATE {table} SET n = %s WHERE id = 1", [value + 1])
    locker.close()


def hold_forever(url: str, prefix: str, ready: Any) -> None:
    """Worker: take the lock, say so, and sleep until killed."""
    locker = kannuki.Locker(url, key_prefix=prefix)
    lock = locker.lock("doomed")  # referenced while it sleeps: a collected Lock is released
    lock.acquire()
    ready.set()
    time.sleep(600)


def report_token(url: str, prefix: str, tokens: Any) -> None:
    """Worker: take the key once with the default options and put its token on the queue."""
    locker = kannuki.Locker(url, key_prefix=prefix)
    with locker.lock("fenced", timeout=60) as lock:
        tokens.put(lock.token)
    locker.close()


def test_item_4_tokens_increase_across_processes_by_default(pg_url: str) -> None:
    """Three processes, one after the other, each with its own in-process table: by default their tokens
    come from the server sequence and increase strictly (each used to get token 1)."""
    prefix = f"t-pg-{uuid.uuid4().hex[:8]}"
    queue = SPAWN.Queue()
    tokens = []
    for _ in range(3):
        worker = SPAWN.Process(target=report_token, args=(pg_url, prefix, queue))
        worker.start()
        assert join_all([worker], 60) == [0]
        tokens.append(queue.get(timeout=10))
    assert tokens == sorted(set(tokens)) and len(tokens) == 3


def test_four_processes_lose_no_update(pg_url: str, pg_conn: Any) -> None:
    """4 spawned processes x 50 read-modify-writes under one lock: the row ends at exactly 200."""
    table = f"t_pg_counter_{uuid.uuid4().hex[:8]}"
    prefix = f"t-pg-{uuid.uuid4().hex[:8]}"
    pg_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL)")
    try:
        pg_conn.execute(f"INSERT INTO {table} VALUES (1, 0)")
        workers = [
            SPAWN.Process(target=increment_under_lock, args=(pg_url, prefix, table, INCREMENTS))
            for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        assert join_all(workers, 100) == [0, 0, 0, 0]
        assert pg_conn.execute(f"SELECT n FROM {table}").fetchone()[0] == 4 * INCREMENTS
    finally:
        pg_conn.execute(f"DROP TABLE {table}")


def test_killed_holder_frees_the_lock(pg_url: str) -> None:
    """A holder process killed with SIGKILL: the server ends its session and the lock is free."""
    prefix = f"t-pg-{uuid.uuid4().hex[:8]}"
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=hold_forever, args=(pg_url, prefix, ready))
    holder.start()
    locker = kannuki.Locker(pg_url, key_prefix=prefix)
    try:
        assert ready.wait(60)
        assert locker.lock("doomed").acquire(blocking=False) is False
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
        lock = locker.lock("doomed")
        assert lock.acquire(timeout=30)  # the server notices the closed socket and frees it
        lock.release()
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join(5)
        locker.close()
