"""The plain Lock's fast path on both twins (PlainPath, LockBase, SyncLockBase): same outcomes, same state."""

from __future__ import annotations

import gc
import random
from types import ModuleType
from typing import Any

import pytest

from kannuki import _pure, events

try:
    from kannuki import _native
except ImportError:
    _native = None

QUIET = {10: False}  # a logger cache that says DEBUG is off


class Keeper:
    """Stands in for the hold owner: records what the core tells it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def plain_acquired(self, lock: Any, token: int) -> None:
        self.calls.append(("acquired", token))

    def plain_released(self, lock: Any, token: int, held_for: float) -> None:
        assert held_for >= 0
        self.calls.append(("released", token))

    def plain_not_released(self, lock: Any, token: int, since: float, recorded: bool) -> Exception:
        self.calls.append(("lost" if recorded else "closed", token))
        return RuntimeError(f"gone: recorded={recorded}")


def _setup(core: ModuleType, *, log_levels: dict[int, bool] | None = None) -> tuple[Any, Any, Any, Keeper]:
    """A path to a fresh table and a sync lock class on it whose slow paths say they ran."""

    class Lock(core.SyncLockBase):  # type: ignore[misc,name-defined]
        __slots__ = ()
        abandoned: list[str] = []  # noqa: RUF012 (a test's record)

        def _acquire(self, blocking: bool, timeout: float | None) -> str:
            return "general acquire"

        def _release_hold(self) -> None:
            raise LookupError("general release")

        def _enter(self) -> str:
            return "general enter"

        def _abandon(self) -> None:
            type(self).abandoned.append(self.key)

    keeper = Keeper()
    table = core.LockTable()
    stats = core.Counters()
    path = core.PlainPath(keeper, stats, True, 7, QUIET if log_levels is None else log_levels)
    path.use(table, core.TokenSet(table))
    return path, Lock, table, keeper


def _lock(path: Any, cls: Any, key: str = "k", **extra: Any) -> Any:
    args = {"ttl": None, "transaction": None, **extra}
    return cls(path, "locker", key, key, 1, None, False, "blocking", args["ttl"], args["transaction"])


def _scenario(core: ModuleType) -> list[object]:
    """One run through every outcome of the fast path; what was observed, for the twins to agree on."""
    path, cls, table, keeper = _setup(core)
    out: list[object] = []
    lock, other = _lock(path, cls), _lock(path, cls)
    out.append(lock.acquire())  # the plain path
    token = lock._plain
    out += [token > 0, token in path.tokens, lock._generation, lock._spent, table.held("k")]
    out.append(other.acquire())  # the key is held: the general way
    out.append(other.__enter__())
    out.append(lock.acquire())  # this Lock holds: the general way (which raises AlreadyHeldError)
    lock.release()
    out += [lock._plain, token in path.tokens, table.held("k"), path.stats.snapshot()[:4]]
    with pytest.raises(LookupError):
        lock.release()  # nothing held: the general way
    with lock as entered:
        out.append(entered is lock)
        out.append(lock._plain in path.tokens)
    out.append(table.held("k"))
    out.append(lock.acquire(False, 1.0))  # a timeout: the general way validates it
    out.append(_lock(path, cls, ttl=5.0).acquire())  # a lease is never plain
    out.append(_lock(path, cls, transaction=object()).acquire())
    lock._busy = True
    out.append(lock.acquire())
    lock._busy = False
    # A hold that close() dropped from the set, then one whose table lost it.
    assert lock.acquire() is True
    path.tokens.discard(lock._plain)  # as close() does, which also frees it in the table
    table.release("k", lock._plain)
    with pytest.raises(RuntimeError, match="recorded=False"):
        lock.release()
    out += [lock._spent, lock._plain != 0, lock._release_plain()]
    lock._plain = 0
    assert lock.acquire() is True
    table.clear()
    with pytest.raises(RuntimeError, match="recorded=True"):
        lock.release()
    # A fork moves the path's generation on: the hold is not this process's any more.
    lock._plain = 0
    assert lock.acquire() is True
    path.generation += 1
    out.append(lock._release_plain())
    with pytest.raises(LookupError):
        lock.release()
    path.generation -= 1
    lock.release()
    # No table: every acquire goes the general way.
    path.use(None, None)
    out += [path.table, path.tokens, lock.acquire()]
    out.append([name for name, _token in keeper.calls])
    return out


@pytest.mark.skipif(_native is None, reason="kannuki._native is not built")
def test_twins_agree_on_the_fast_path() -> None:
    """The compiled and the pure fast path give the same answers and leave the same state."""
    assert _scenario(_native) == _scenario(_pure)


def test_fast_path_outcomes(core: ModuleType) -> None:
    """A quiet plain lock calls nothing of the keeper; failures go to the subclass or raise the keeper's error."""
    out = _scenario(core)
    assert out[0] is True and out[1:6] == [True, True, 7, False, True]
    assert out[6:9] == ["general acquire", "general enter", "general acquire"]
    assert out[9:12] == [0, False, False] and out[12] == (1, 0, 0, 1)
    assert out[13:16] == [True, True, False]
    assert out[16:20] == ["general acquire"] * 4
    assert out[20:23] == [True, True, False]
    assert out[23] is False  # another generation: not this process's hold
    assert out[24:27] == [None, None, "general acquire"]
    assert out[27] == ["closed", "lost"]  # nothing was listening: only the losses reached the keeper


def test_listening_reaches_the_keeper(core: ModuleType) -> None:
    """An event subscriber, or a logger cache that does not say DEBUG is off, brings the keeper's reports."""
    path, cls, _table, keeper = _setup(core)
    lock = _lock(path, cls)
    unsubscribe = events.subscribe(lambda event: None)
    try:
        with lock:
            pass
    finally:
        unsubscribe()
    assert [name for name, _token in keeper.calls] == ["acquired", "released"]
    path.instrumented = False  # events off for this locker: a subscriber does not count
    unsubscribe = events.subscribe(lambda event: None)
    try:
        with lock:
            pass
    finally:
        unsubscribe()
    assert len(keeper.calls) == 2
    path2, cls2, _table2, keeper2 = _setup(core, log_levels={})  # no cached answer: maybe DEBUG
    with _lock(path2, cls2):
        pass
    assert [name for name, _token in keeper2.calls] == ["acquired", "released"]


def test_a_collected_holder_is_abandoned(core: ModuleType) -> None:
    """A Lock that holds when it is collected calls its ``_abandon``; a released one does not."""
    path, cls, _table, _keeper = _setup(core)
    released = _lock(path, cls, "released")
    with released:
        pass
    holding = _lock(path, cls, "holding")
    assert holding.acquire()
    del released, holding
    gc.collect()
    assert cls.abandoned == ["holding"]


def test_path_use_refuses_a_half(core: ModuleType) -> None:
    """``use`` takes a table and its token set together, or neither."""
    path = core.PlainPath()
    with pytest.raises(TypeError):
        path.use(core.LockTable(), None)
    with pytest.raises(TypeError):
        path.use(None, set())


def _token_workout(core: ModuleType, seed: int) -> list[object]:
    """Random adds and removes on a TokenSet beside a set: what each step saw, for the twins to agree on."""
    rng = random.Random(seed)
    tokens, mirror = core.TokenSet("table"), set()
    out: list[object] = []
    base = rng.getrandbits(40) + 1
    for _ in range(3000):
        token = base + rng.randrange(200)  # a narrow range: clusters, collisions and shifts in the slots
        if rng.random() < 0.55:
            tokens.add(token)
            mirror.add(token)
        else:
            try:
                tokens.remove(token)
                out.append(True)
            except KeyError:
                out.append(False)
            assert out[-1] == (token in mirror)
            mirror.discard(token)
        assert len(tokens) == len(mirror)
        probe = base + rng.randrange(200)
        assert (probe in tokens) == (probe in mirror)
    assert list(tokens) == sorted(mirror) and tokens.table == "table"
    out.append(list(tokens))
    tokens.clear()
    assert len(tokens) == 0 and list(tokens) == [] and base not in tokens
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_token_set_is_a_set_of_tokens(core: ModuleType, seed: int) -> None:
    """TokenSet answers add / remove / in / len / iteration as a set of ints does."""
    _token_workout(core, seed)


@pytest.mark.skipif(_native is None, reason="kannuki._native is not built")
def test_token_set_twins_agree() -> None:
    """The compiled TokenSet (its own hash table) and the pure one (a set) agree step by step."""
    assert _token_workout(_native, 9) == _token_workout(_pure, 9)


def test_token_set_refuses_what_is_no_token(core: ModuleType) -> None:
    """Only ints in 1..2**64-1 are tokens; anything else is never in the set."""
    tokens = core.TokenSet()
    for bad in (0, -1, 1 << 64):
        with pytest.raises((ValueError, OverflowError)):
            tokens.add(bad)
    with pytest.raises(TypeError):
        tokens.add("1")
    assert "1" not in tokens and True not in tokens and 0 not in tokens
    with pytest.raises(KeyError):
        tokens.remove(5)


def test_make_builds_a_defaulted_lock(core: ModuleType) -> None:
    """make() gives a lock with the locker's defaults, None when any option is given, and validates the key."""
    path, cls, _table, _keeper = _setup(core)
    unset = object()
    path.set_defaults("app", 5.0, "retry", unset)
    lock = path.make(cls, "locker", "job", unset, False, None, None, None, None, False)
    assert (lock.name, lock.lock_id) == core.name_and_id("job", "app")
    assert (lock.key, lock.locker, lock.timeout, lock.strategy, lock.shared) == (
        "job",
        "locker",
        5.0,
        "retry",
        False,
    )
    assert lock.ttl is None and lock.transaction is None and lock.on_lost is None and not lock.cancel_on_lost
    assert lock._plain == 0 and lock._hold is None and lock.acquire() is True
    lock.release()
    again = path.make(cls, "locker", "job", unset, False, None, None, None, None, False)
    assert again is not lock and again.name == lock.name  # a remembered key: the same name
    given = [(1.0, False, None, None, None, None, False), (unset, True, None, None, None, None, False)]
    given += [(unset, False, "retry", None, None, None, False), (unset, False, None, 1.0, None, None, False)]
    given += [
        (unset, False, None, None, object(), None, False),
        (unset, False, None, None, None, print, False),
    ]
    given += [(unset, False, None, None, None, None, True)]
    for options in given:
        assert path.make(cls, "locker", "job", *options) is None
    for bad, error in (("", ValueError), (b"job", TypeError), ("\ud800", ValueError)):
        with pytest.raises(error):
            path.make(cls, "locker", bad, unset, False, None, None, None, None, False)
    with pytest.raises(TypeError):
        path.make(object, "locker", "job", unset, False, None, None, None, None, False)


def test_make_names_a_str_subclass_key_by_its_value(core: ModuleType) -> None:
    """A key of a str subclass gets the exact-str full name, and is not remembered under its own type."""

    class Job(str):
        pass

    path, cls, _table, _keeper = _setup(core)
    unset = object()
    path.set_defaults(None, None, "blocking", unset)
    lock = path.make(cls, "locker", Job("job"), unset, False, None, None, None, None, False)
    assert type(lock.name) is str and lock.name == "job" and type(lock.key) is Job
