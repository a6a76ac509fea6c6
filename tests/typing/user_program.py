"""A user's program under ``mypy --strict``: kannuki's public API has real types, no Any where a value is.

Type-checked by tests/test_typing.py (never run): each ``assert_type`` is what a user relies on.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from typing_extensions import assert_type

import kannuki

locker = kannuki.Locker("memory://typed")


def double(n: int) -> int:
    return n * 2


async def adouble(n: int) -> int:
    return n * 2


assert_type(locker.with_lock("k", double, 1), int | Literal[False])
assert_type(locker.try_lock("k", double, 1), int | Literal[False])
assert_type(locker.lock_or_raise("k", double, 1), int)
assert_type(locker.held("k"), bool)
assert_type(kannuki.with_lock("k", double, 2), int | Literal[False])

lock = locker.lock("k", timeout=5)
assert_type(lock, kannuki.Lock)
assert_type(lock.acquire(timeout=1), bool)
assert_type(lock.token, int | None)
assert_type(lock.lost, bool)
with lock:
    lock.ensure_held()

many = locker.lock_many(["a", "b"])
assert_type(many, kannuki.MultiLock)
assert_type(many.tokens, list[int | None] | None)


@locker.locked("import/{import_id}")
def run_import(import_id: int) -> str:
    return str(import_id)


assert_type(run_import(3), str)


@locker.locked("import/{import_id}", on_conflict="skip")
def maybe_import(import_id: int) -> str:
    return str(import_id)


assert_type(maybe_import(3), str | None)


@kannuki.unique()
def report(day: str) -> int:
    return len(day)


assert_type(report("mon"), int | None)

try:
    lock.acquire()
except kannuki.LockNotAcquiredError as exc:
    assert_type(exc.key, str | None)
    assert_type(exc.holder, kannuki.Holder | None)
    assert_type(exc.retry_after, float | None)


async def main() -> None:
    alocker = kannuki.AsyncLocker("memory://typed")
    assert_type(await alocker.with_lock("k", adouble, 1), int | Literal[False])
    assert_type(await alocker.with_lock("k", double, 1), int | Literal[False])
    assert_type(await alocker.try_lock("k", adouble, 1), int | Literal[False])
    assert_type(await alocker.lock_or_raise("k", adouble, 1), int)
    alock = alocker.lock("k", cancel_on_lost=True)
    assert_type(alock, kannuki.AsyncLock)
    async with alock:
        await alock.ensure_held()
    assert_type(await alock.acquire(), bool)

    @alocker.locked("job/{n}", on_conflict="skip")
    async def job(n: int) -> int:
        return n

    assert_type(await job(1), int | None)
    await alocker.aclose()


asyncio.run(main())
