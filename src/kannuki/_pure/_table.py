"""The in-process lock table: exclusive / shared holders, FIFO waiters, TTLs, fencing tokens.

One mutex guards the whole table and is never held while a thread waits.
Each waiter blocks on its own pre-acquired lock; the releaser grants the lock
to the head waiter(s) before waking them (direct hand-off), so nobody barges.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Hashable
from typing import Callable

_INF = math.inf


def _check_timeout(timeout: object) -> float:
    if timeout is None:
        return _INF
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    return float(timeout)


def _check_ttl(ttl: object) -> float:
    if ttl is None:
        return _INF
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds or None, not {type(ttl).__name__}")
    if not ttl > 0 or math.isnan(ttl):
        raise ValueError(f"ttl must be a number of seconds > 0 or None, got {ttl!r}")
    return float(ttl)


def _check_token(token: object) -> int:
    if isinstance(token, bool) or not isinstance(token, int):
        raise TypeError(f"token must be an int, not {type(token).__name__}")
    return token


class _Waiter:
    __slots__ = ("lock", "shared", "signaled", "token", "ttl")

    def __init__(self, shared: bool, ttl: float) -> None:
        self.shared = shared
        self.ttl = ttl
        self.token = 0
        self.signaled = False
        self.lock = threading.Lock()
        self.lock.acquire()


class _Entry:
    """One key: its holders ``token -> (shared, expires_at)`` and its queue of waiters."""

    __slots__ = ("exclusive", "holders", "nttl", "waiters")

    def __init__(self) -> None:
        self.holders: dict[int, tuple[bool, float]] = {}
        self.exclusive = False
        self.nttl = 0  # holders with a TTL: skip the expiry scan when 0
        self.waiters: deque[_Waiter] = deque()

    def grantable(self, shared: bool) -> bool:
        return not self.exclusive if shared else not self.holders


class LockTable:
    """An in-process table of keys -> holders with fencing tokens.

    ``clock`` (default ``time.monotonic``) measures TTLs. With the default
    clock a waiter behind a TTL holder wakes by itself when the lease runs out;
    with an injected clock, advance it and call ``expire()`` or ``acquire()``.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = time.monotonic if clock is None else clock
        self._realtime = clock is None
        self._mutex = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}
        self._next_token = 1
        self._parked: tuple[Hashable, _Entry] | None = None  # the one idle entry kept (see _forget_if_idle)

    def __repr__(self) -> str:
        in_use = sum(1 for entry in self._entries.values() if entry.holders or entry.waiters)
        return f"<LockTable keys={in_use} next_token={self._next_token}>"

    # -- internals, all called with the mutex held ---------------------------------

    def _add(self, entry: _Entry, shared: bool, ttl: float) -> int:
        token = self._next_token
        self._next_token += 1
        expires = _INF
        if ttl != _INF:
            expires = self._clock() + ttl
            entry.nttl += 1
        entry.holders[token] = (shared, expires)
        if not shared:
            entry.exclusive = True
        return token

    def _drop(self, entry: _Entry, token: int) -> bool:
        held = entry.holders.pop(token, None)
        if held is None:
            return False
        if held[1] != _INF:
            entry.nttl -= 1
        if not held[0]:
            entry.exclusive = False
        return True

    def _grant(self, entry: _Entry) -> None:
        """Hand the key to the head waiter(s) that fit, then wake them."""
        granted_ttl = False
        waiters = entry.waiters
        while waiters and entry.grantable(waiters[0].shared):
            waiter = waiters.popleft()
            waiter.token = self._add(entry, waiter.shared, waiter.ttl)
            granted_ttl = granted_ttl or waiter.ttl != _INF
            self._signal(waiter)
        if granted_ttl:
            self._kick(entry)

    def _signal(self, waiter: _Waiter) -> None:
        if not waiter.signaled:
            waiter.signaled = True
            waiter.lock.release()

    def _kick(self, entry: _Entry) -> None:
        # Holders' expiry changed: waiters recompute how long they may sleep.
        if self._realtime:
            for waiter in entry.waiters:
                self._signal(waiter)

    def _evict(self, entry: _Entry) -> int:
        if not entry.nttl:
            return 0
        now = self._clock()
        dead = [token for token, (_, expires) in entry.holders.items() if expires <= now]
        for token in dead:
            self._drop(entry, token)
        if dead:
            self._grant(entry)
        return len(dead)

    def _forget_if_idle(self, key: Hashable, entry: _Entry) -> None:
        # An idle entry stays as the table's one parked entry, so a key taken and released
        # over and over costs no allocation and no dict insert / delete. The entry parked
        # before it is dropped if it is still idle and still the table's: one idle entry at most.
        # Invariant: the parked entry is the table's entry for the parked key.
        parked = self._parked
        if entry.holders or entry.waiters or (parked is not None and parked[1] is entry):
            return
        if self._entries.get(key) is not entry:
            return
        if parked is not None:
            parked_key, parked_entry = parked
            if not parked_entry.holders and not parked_entry.waiters:
                del self._entries[parked_key]
        self._parked = (key, entry)

    def _entry(self, key: Hashable) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.nttl and self._evict(entry):
            self._forget_if_idle(key, entry)
            entry = self._entries.get(key)
        return entry

    # -- public API -----------------------------------------------------------------

    def acquire(
        self,
        key: Hashable,
        shared: bool = False,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> int:
        """Take ``key``; return a fencing token (> 0), or 0 when not acquired in ``timeout``.

        ``timeout`` None waits forever, 0 tries once. Waiters are served FIFO
        and a new request never overtakes a queued one. The wait is
        interruptible (Ctrl-C); nothing stays held or queued after it.
        """
        wait = _check_timeout(timeout)
        lease = _check_ttl(ttl)
        shared = bool(shared)
        with self._mutex:
            token = self._take_now(key, shared, lease)
            if token or wait == 0:
                return token
            waiter = _Waiter(shared, lease)
            self._entries[key].waiters.append(waiter)  # _take_now found it held or queued
        return self._wait(key, waiter, wait)

    def try_acquire(self, key: Hashable, shared: bool) -> int:
        """``acquire(key, shared, 0, None)`` for callers whose arguments are already valid: one try, no TTL.

        The uncontended hot path: a token (> 0), or 0 when ``key`` is held or
        has waiters (then call ``acquire`` to wait).
        """
        with self._mutex:
            return self._take_now(key, bool(shared), _INF)

    def _take_now(self, key: Hashable, shared: bool, lease: float) -> int:
        """With the mutex held: a new holder of ``key`` when it is free for ``shared`` and nobody queues; else 0."""
        entry = self._entry(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        elif entry.waiters or not entry.grantable(shared):
            return 0
        return self._add(entry, shared, lease)

    def _wait(self, key: Hashable, waiter: _Waiter, wait: float) -> int:
        deadline = time.monotonic() + wait
        try:
            while True:
                remaining = deadline - time.monotonic()
                sleep = remaining
                if self._realtime:
                    sleep = min(sleep, self._sleep_bound(key))
                if sleep > 0:
                    got = waiter.lock.acquire(
                        True, -1 if sleep == _INF else min(sleep, threading.TIMEOUT_MAX)
                    )
                else:
                    got = waiter.lock.acquire(False)
                with self._mutex:
                    if waiter.signaled:
                        if not got:
                            waiter.lock.acquire(False)  # re-arm: consume the pending wake-up
                        waiter.signaled = False
                    if waiter.token:
                        return waiter.token
                    entry = self._entries.get(key)
                    if entry is not None and entry.nttl and self._evict(entry) and waiter.token:
                        return waiter.token
                    if deadline - time.monotonic() <= 0:
                        self._abandon(key, waiter)
                        return 0
        except BaseException:
            with self._mutex:
                if waiter.token:
                    entry = self._entries.get(key)
                    if entry is not None and self._drop(entry, waiter.token):
                        self._grant(entry)
                        self._forget_if_idle(key, entry)
                else:
                    self._abandon(key, waiter)
            raise

    def _sleep_bound(self, key: Hashable) -> float:
        # Racy read without the mutex is fine: a change of holders kicks the waiter.
        entry = self._entries.get(key)
        if entry is None or not entry.nttl:
            return _INF
        try:
            earliest = min(expires for _, expires in entry.holders.values())
        except (ValueError, RuntimeError):  # emptied or resized under us: look again soon
            return 0.001
        return max(earliest - self._clock(), 0.0) + 0.0005

    def _abandon(self, key: Hashable, waiter: _Waiter) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        try:
            entry.waiters.remove(waiter)
        except ValueError:
            pass
        self._grant(entry)  # the ones behind may fit now
        self._forget_if_idle(key, entry)

    def release(self, key: Hashable, token: int) -> bool:
        """Compare-and-delete: free the holder ``token`` of ``key``; False when it is not a holder."""
        _check_token(token)
        with self._mutex:
            entry = self._entry(key)
            if entry is None or not self._drop(entry, token):
                return False
            self._grant(entry)
            self._forget_if_idle(key, entry)
            return True

    def renew(self, key: Hashable, token: int, ttl: float | None) -> bool:
        """Give holder ``token`` a new TTL from now (None: no TTL); False when it is not a holder."""
        _check_token(token)
        lease = _check_ttl(ttl)
        with self._mutex:
            entry = self._entry(key)
            if entry is None or token not in entry.holders:
                return False
            shared, expires = entry.holders[token]
            entry.nttl -= expires != _INF
            if lease != _INF:
                entry.nttl += 1
                entry.holders[token] = (shared, self._clock() + lease)
            else:
                entry.holders[token] = (shared, _INF)
            self._kick(entry)
            return True

    def held(self, key: Hashable) -> bool:
        """Whether ``key`` has a holder now."""
        with self._mutex:
            entry = self._entry(key)
            return entry is not None and bool(entry.holders)

    def holders(self, key: Hashable) -> list[tuple[int, bool, float | None]]:
        """``(token, shared, expires_at)`` for each current holder of ``key``, oldest first."""
        with self._mutex:
            entry = self._entry(key)
            if entry is None:
                return []
            return [
                (token, shared, None if expires == _INF else expires)
                for token, (shared, expires) in sorted(entry.holders.items())
            ]

    def waiters(self, key: Hashable) -> int:
        """How many threads wait for ``key``."""
        with self._mutex:
            entry = self._entries.get(key)
            return 0 if entry is None else len(entry.waiters)

    def keys(self) -> list[Hashable]:
        """The keys held now."""
        with self._mutex:
            self._expire_all()
            return [key for key, entry in self._entries.items() if entry.holders]

    def _expire_all(self) -> int:
        evicted = 0
        for key, entry in list(self._entries.items()):
            if entry.nttl:
                evicted += self._evict(entry)
                self._forget_if_idle(key, entry)
        return evicted

    def expire(self) -> int:
        """Evict holders whose TTL ran out (by the table's clock), hand off to waiters; return how many."""
        with self._mutex:
            return self._expire_all()

    def clear(self) -> None:
        """Drop every holder and hand the keys to their waiters."""
        with self._mutex:
            for key, entry in list(self._entries.items()):
                entry.holders.clear()
                entry.exclusive = False
                entry.nttl = 0
                self._grant(entry)
                self._forget_if_idle(key, entry)

    def reset_after_fork(self) -> None:
        """In a forked child: new internal mutex, no holders, no waiters; tokens go on increasing."""
        self._mutex = threading.Lock()
        self._entries = {}
        self._parked = None

    def __len__(self) -> int:
        """The number of keys held now."""
        with self._mutex:
            self._expire_all()
            return sum(1 for entry in self._entries.values() if entry.holders)
