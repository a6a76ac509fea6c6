"""Job functions for tests/test_rq.py: importable by a real RQ worker (its PYTHONPATH has tests/).

The worker and the test process build the same locker from the environment: the lock store's URL
and a key prefix unique to the run, and a directory for the marker and gate files.
"""

from __future__ import annotations

import os
import time

import kannuki
from kannuki.contrib.rq import unique_job

E = os.environ
locker = kannuki.Locker(
    E.get("KANNUKI_RQ_LOCKS", "memory://rq-jobs"), key_prefix=E.get("KANNUKI_RQ_PREFIX", "rq")
)
DIR = E.get("KANNUKI_RQ_DIR", ".")


def mark(name: str) -> None:
    open(os.path.join(DIR, f"{name}@{time.monotonic_ns()}"), "w").close()


def wait_for_gate(name: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(DIR, "gate-" + name)) and time.monotonic() < deadline:
        time.sleep(0.02)


@locker.unique(on_conflict="skip")
def import_batch(batch_id: int) -> str:
    mark(f"ran-{batch_id}")
    wait_for_gate(f"batch-{batch_id}")
    return f"imported {batch_id}"


@locker.locked("report/{account_id}")
def report(account_id: int) -> str:
    held = locker.held(f"report/{account_id}")
    return f"report {account_id} held={held}"


@unique_job(locker=locker, ttl=60, run_ttl=2)
def rebuild(shop_id: int, mode: str = "ok") -> str:
    mark(f"rebuild-{shop_id}")
    wait_for_gate(f"shop-{shop_id}")
    if mode == "fail":
        raise ValueError(f"shop {shop_id} failed")
    return f"rebuilt {shop_id}"


@unique_job(locker=locker, key="sync/{account_id}", on_duplicate="raise")
def sync_account(account_id: int) -> str:
    mark(f"sync-{account_id}")
    wait_for_gate(f"sync-{account_id}")
    return f"synced {account_id}"


@unique_job(locker=locker, run_ttl=1.5)
def long_run(n: int) -> int:
    mark(f"long-{n}")
    wait_for_gate(f"long-{n}")
    return n
