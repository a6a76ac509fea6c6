"""The in-process lock table: exclusive / shared holders, FIFO waiters, TTLs, fencing tokens.

One mutex guards the whole table and is never held while a thread waits.
Each waiter blocks on its own pre-acquired lock; the releaser grants the lock
to the head waiter(s) before waking them (direct hand-off), so nobody barges.

Every holder records the thread that acquired it, and every thread that waits
in a table of this process is listed in one process-wide registry of waits.
Before it waits, a thread walks the wait-for graph (the holders of its key ->
the key each of those threads waits for -> its holders ...) across every
table; a wait that would close a cycle raises DeadlockError instead.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

from kannuki.errors import DeadlockError

_INF = math.inf
_get_ident = threading.get_ident
_local = threading.local()
_next_serial = itertools.count(1).__next__


def _thread_serial() -> int:
    """This thread's number, the owner recorded for its holds and waits.

    Unlike ``threading.get_ident()`` it is never reused by a later thread, so
    a hold left by a thread that ended is nobody's: a new thread that happens
    to get the old ident does not wait "for itself".
    """
    try:
        serial: int = _local.serial
    except AttributeError:
        serial = _local.serial = _next_serial()
    return serial


# The process-wide registry of waits: thread serial -> (table, key, waiter) for each thread
# waiting in a LockTable now. A thread adds itself only while holding _waits_guard, right after
# its deadlock check, so checks are serialised and one of two threads closing a cycle at the
# same moment always sees the other. An entry may outlive its wait for a moment: an edge counts
# only while its waiter is still queued and ungranted, which is read under that table's mutex.
# Lock order: _waits_guard, then one table mutex at a time; never the other way round.
_waits: dict[int, tuple[LockTable, Hashable, _Waiter]] = {}
_waits_guard = threading.RLock()  # reentrant: a signal handler may wait while its thread walks


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


_Cycle = list[tuple[Hashable, int]]


def _walk(table: LockTable, key: Hashable, waiter: _Waiter, me: int, forever: bool) -> _Cycle | None:
    """With ``_waits_guard`` held: the path from ``waiter`` back to thread ``me`` in the wait-for graph, or None.

    ``forever`` false (a timed wait): this thread holding ``key`` itself is no
    cycle (SPEC §3: such a wait just times out), but the walk goes on through
    the other holders, so a cycle among threads is still found.

    Depth first over ``key -> the threads holding it -> the key each of them
    waits for (the registry) -> ...``, one table mutex at a time. The path is
    ``(key, ident)`` steps: ``key`` is held by the thread ``ident``
    (``threading.get_ident()``), which waits for the next step's key; the
    last step's thread is this one.
    """
    stack: list[tuple[LockTable, Hashable, _Waiter, _Cycle]] = [(table, key, waiter, [])]
    seen: set[int] = set()
    expanded: set[tuple[LockTable, Hashable]] = set()  # keys whose holders are listed already
    while stack:
        at, at_key, at_waiter, path = stack.pop()
        slot = (at, at_key)
        if slot in expanded:  # another waiter of that key: blocked by the same holders, seen already
            continue
        blockers = at._blockers(at_key, at_waiter)
        if blockers is None:  # that wait is over: no edge
            continue
        expanded.add(slot)
        for thread in blockers:
            if thread == me:
                if path or forever:
                    return [*path, (at_key, waiter.ident)]
                continue  # a timed wait on a key this thread holds: not a deadlock by itself
            if thread in seen:
                continue
            seen.add(thread)
            edge = _waits.get(thread)
            if edge is not None:  # only a thread that waits can block for ever
                stack.append((edge[0], edge[1], edge[2], [*path, (at_key, edge[2].ident)]))
    return None


def _deadlock(key: Hashable, cycle: _Cycle) -> DeadlockError:
    """The error for a wait on ``key`` that would close ``cycle`` (see ``LockTable._find_cycle``)."""
    if len(cycle) == 1:
        message = (
            f"waiting without a timeout for {key!r} would never end: this thread holds it already"
            " (locks are not reentrant, and a hold belongs to the thread that took it, whichever"
            " thread is to release it; pass a timeout to wait for a release by another thread)"
        )
    else:
        steps = [f"{key!r} is held by thread {cycle[0][1]}"]
        steps += [f"which waits for {waited!r}, held by thread {thread}" for waited, thread in cycle[1:-1]]
        steps.append(f"which waits for {cycle[-1][0]!r}, held by this thread")
        message = f"waiting for {key!r} would deadlock: " + ", ".join(steps)
    return DeadlockError(message, key=key if isinstance(key, str) else None)


def _reset_waits_in_child() -> None:
    # The child has one thread: the others' waits are void, and the guard may be held by one of them.
    global _waits_guard
    _waits_guard = threading.RLock()
    _waits.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_waits_in_child)


class _Waiter:
    __slots__ = ("gone", "ident", "lock", "shared", "signaled", "thread", "token", "ttl")

    def __init__(self, shared: bool, ttl: float) -> None:
        self.shared = shared
        self.ttl = ttl
        self.token = 0
        self.signaled = False
        self.gone = False  # left the queue without a grant (timeout, interrupt, deadlock)
        self.thread = _thread_serial()
        self.ident = _get_ident()
        self.lock = threading.Lock()
        self.lock.acquire()


class _Entry:
    """One key: its holders ``token -> (shared, expires_at, owner thread)`` and its queue of waiters."""

    __slots__ = ("exclusive", "holders", "nttl", "waiters")

    def __init__(self) -> None:
        self.holders: dict[int, tuple[bool, float, int]] = {}
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

    Each holder belongs to the thread that acquired it. A blocking acquire
    (timeout not 0) that would wait for this thread itself, directly or
    through other threads' waits in any table of this process, raises
    :class:`kannuki.errors.DeadlockError` at once instead of waiting.
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

    def _add(self, entry: _Entry, shared: bool, ttl: float, owner: int) -> int:
        token = self._next_token
        self._next_token += 1
        expires = _INF
        if ttl != _INF:
            expires = self._clock() + ttl
            entry.nttl += 1
        entry.holders[token] = (shared, expires, owner)
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
            waiter.token = self._add(entry, waiter.shared, waiter.ttl, waiter.thread)
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
        dead = [token for token, (_, expires, _owner) in entry.holders.items() if expires <= now]
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
        interruptible (Ctrl-C): the exception propagates with nothing held
        or queued, even when the key was handed over just before.

        A wait that can never end raises :class:`kannuki.errors.DeadlockError`
        at once, with nothing held or queued: a wait without a timeout for a
        key this thread holds already (exclusive, or shared while an
        exclusive request is queued or this one is exclusive), or any wait,
        timed or not, for a key held by a thread that waits, directly or
        through other threads, for a key this thread holds, in any table of
        this process. A timed wait on a key only this thread blocks just
        times out (SPEC §3); a try (``timeout=0``) answers 0.
        """
        wait = _check_timeout(timeout)
        lease = _check_ttl(ttl)
        shared = bool(shared)
        token = 0
        waiter = None
        try:
            with self._mutex:
                token = self._take_now(key, shared, lease, _thread_serial())
                if token or wait == 0:
                    return token
                waiter = _Waiter(shared, lease)
                self._entries[key].waiters.append(waiter)  # _take_now found it held or queued
            return self._wait(key, waiter, wait)
        except BaseException:
            # A signal handler's exception can come at any bytecode check: as the mutex is let go,
            # as _wait starts. Give back what was taken, leave the queue (both idempotent).
            if token:
                self._give_back(key, token)
            elif waiter is not None:
                self._leave(key, waiter)
            raise

    def try_acquire(self, key: Hashable, shared: bool) -> int:
        """``acquire(key, shared, 0, None)`` for callers whose arguments are already valid: one try, no TTL.

        The uncontended hot path: a token (> 0), or 0 when ``key`` is held or
        has waiters (then call ``acquire`` to wait).
        """
        token = 0
        try:
            with self._mutex:
                token = self._take_now(key, bool(shared), _INF, _thread_serial())
        except BaseException:
            if token:  # a signal handler raised as the mutex was let go: give the key back
                self._give_back(key, token)
            raise
        return token

    def _take_now(self, key: Hashable, shared: bool, lease: float, owner: int) -> int:
        """With the mutex held: a new holder of ``key`` when it is free for ``shared`` and nobody queues; else 0."""
        entry = self._entry(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        elif entry.waiters or not entry.grantable(shared):
            return 0
        return self._add(entry, shared, lease, owner)

    def _wait(self, key: Hashable, waiter: _Waiter, wait: float) -> int:
        me = waiter.thread
        outer = _waits.get(me)  # a wait of this thread that a signal handler interrupted to wait here
        try:
            # SPEC §3: a thread that waits WITHOUT END for a key it holds itself, or any wait that
            # closes a cycle among threads. A timed wait on one's own key just times out.
            cycle = self._find_cycle(key, waiter, wait == _INF)
            if cycle is not None:
                with self._mutex:
                    if not waiter.token:  # else granted meanwhile: the cycle is gone, take the key
                        self._abandon(key, waiter)
                if not waiter.token:
                    raise _deadlock(key, cycle)
            deadline = time.monotonic() + wait
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
            # Interrupted (a signal handler's exception, e.g. Ctrl-C), anywhere up to the return:
            # give back a key handed over meanwhile, or leave the queue.
            self._leave(key, waiter)
            raise
        finally:
            if outer is None:
                _waits.pop(me, None)
            else:
                with _waits_guard:
                    _waits[me] = outer

    def _find_cycle(self, key: Hashable, waiter: _Waiter, forever: bool) -> _Cycle | None:
        """With no table mutex held: the wait-for cycle that ``waiter`` would close, or None.

        None also registers the wait in the process-wide registry, in the same
        critical section as the check: of two threads closing a cycle at once,
        the second one always sees the first. The cycle is as ``_walk`` gives it.
        """
        me = waiter.thread
        with _waits_guard:
            cycle = _walk(self, key, waiter, me, forever)
            if cycle is None:
                _waits[me] = (self, key, waiter)
            return cycle

    def _blockers(self, key: Hashable, waiter: _Waiter) -> list[int] | None:
        """The threads (serials) of the holders that ``waiter`` (queued for ``key``) waits for; None once it no longer waits.

        Every holder counts, shared ones for a shared waiter too: a waiter that
        is not granted at once queues behind a holder it conflicts with, or
        behind a waiter ahead (no barging) that waits for the holders. The
        waiters ahead add nothing else to the graph: they wait for the same
        holders, in this key only.
        """
        with self._mutex:
            entry = self._entry(key)  # expired leases do not block
            if entry is None or waiter.token or waiter.gone:
                return None
            return [owner for _shared, _expires, owner in entry.holders.values()]

    def _leave(self, key: Hashable, waiter: _Waiter) -> None:
        """An interrupted wait: give back the key if it was handed over, else leave the queue (idempotent)."""
        with self._mutex:
            if waiter.token:
                entry = self._entries.get(key)
                if entry is not None and self._drop(entry, waiter.token):
                    self._grant(entry)
                    self._forget_if_idle(key, entry)
            else:
                self._abandon(key, waiter)

    def _give_back(self, key: Hashable, token: int) -> None:
        with self._mutex:
            entry = self._entries.get(key)
            if entry is not None and self._drop(entry, token):
                self._grant(entry)
                self._forget_if_idle(key, entry)

    def _sleep_bound(self, key: Hashable) -> float:
        # Racy read without the mutex is fine: a change of holders kicks the waiter.
        entry = self._entries.get(key)
        if entry is None or not entry.nttl:
            return _INF
        try:
            earliest = min(expires for _, expires, _owner in entry.holders.values())
        except (ValueError, RuntimeError):  # emptied or resized under us: look again soon
            return 0.001
        return max(earliest - self._clock(), 0.0) + 0.0005

    def _abandon(self, key: Hashable, waiter: _Waiter) -> None:
        if waiter.gone:
            return
        waiter.gone = True
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
            shared, expires, owner = entry.holders[token]
            entry.nttl -= expires != _INF
            if lease != _INF:
                entry.nttl += 1
                entry.holders[token] = (shared, self._clock() + lease, owner)
            else:
                entry.holders[token] = (shared, _INF, owner)
            self._kick(entry)
            return True

    def disown(self, key: Hashable, token: int) -> bool:
        """Make holder ``token`` of ``key`` nobody's: no thread waits "for itself" on it; False when it is not a holder.

        For a hold taken on behalf of someone else (a simulated holder, a
        hold that another thread is to release): a wait for it is an ordinary
        wait, never a DeadlockError.
        """
        _check_token(token)
        with self._mutex:
            entry = self._entry(key)
            if entry is None or token not in entry.holders:
                return False
            shared, expires, _owner = entry.holders[token]
            entry.holders[token] = (shared, expires, 0)  # serials start at 1: 0 is no thread
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
                for token, (shared, expires, _owner) in sorted(entry.holders.items())
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
