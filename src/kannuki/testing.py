"""Test mode: every locker uses one in-process table, so tests need no database.

::

    import kannuki.testing

    kannuki.testing.enable()
    locker = kannuki.Locker("postgresql://db.invalid/app")   # no connection is ever made
    kannuki.testing.simulate_lock_held("nightly-report")
    assert locker.try_lock("nightly-report", print) is False
    kannuki.testing.disable()

While test mode is on, every locker, existing or new and whatever its URL,
sends its locks to one private memory table, and the module-level verbs
(``kannuki.with_lock`` ...) work without ``kannuki.configure()``. The table is
keyed by full lock names: a locker with ``key_prefix="app"`` sees key ``"x"``
as ``"app:x"``, so simulate its holds with ``simulate_lock_held("x", prefix="app")``.

The pytest plugin (:mod:`kannuki.pytest_plugin`, loaded automatically when
kannuki is installed) offers the fixture ``kannuki_test_mode``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from kannuki import _core, _override
from kannuki._locker import Locker

__all__ = ["clear", "default_locker", "disable", "enable", "is_enabled", "simulate_lock_held", "test_mode"]

_guard = threading.RLock()
_default_locker: Locker | None = None


def enable() -> None:
    """Turn test mode on (a no-op when it is on): every locker now uses a fresh in-process table."""
    with _guard:
        if _override.TABLE is None:
            _override.default_locker_factory = default_locker
            _override.set_table(_core.LockTable())


def disable() -> None:
    """Turn test mode off, dropping every lock and simulated hold of the test table.

    Lockers go back to their own stores. A Lock still held from test mode
    releases into the test table it came from (``release()`` then raises
    LockLostError, as the table was cleared).
    """
    global _default_locker
    with _guard:
        table = _override.TABLE
        _override.set_table(None)
        _override.default_locker_factory = None
        locker, _default_locker = _default_locker, None
    if table is not None:
        table.clear()
    if locker is not None:
        locker.close()


def is_enabled() -> bool:
    """True while test mode is on."""
    return _override.TABLE is not None


def clear() -> None:
    """Drop every lock and simulated hold in the test table (waiters get the keys); test mode stays on."""
    table: Any = _override.TABLE
    if table is not None:
        table.clear()


def simulate_lock_held(key: str, shared: bool = False, *, prefix: str | None = None) -> None:
    """Make every locker see ``key`` as held by someone else until :func:`clear` (or :func:`disable`).

    ``prefix`` is the ``key_prefix`` of the lockers that should see it (None:
    lockers without a prefix). ``shared=True`` simulates a shared holder, so
    shared locks still succeed and exclusive ones do not.

    Raises RuntimeError when test mode is off or the key is already held
    incompatibly, TypeError / ValueError for a bad key.
    """
    if not isinstance(shared, bool):
        raise TypeError(f"shared must be True or False, not {shared!r}")
    name = _core.full_name(key, prefix)
    table: Any = _override.TABLE
    if table is None:
        raise RuntimeError("simulate_lock_held() needs test mode: call kannuki.testing.enable() first")
    token = table.acquire(name, shared, 0.0, None)
    if not token:
        raise RuntimeError(f"cannot simulate a hold of {name!r}: it is already held in a conflicting mode")
    # Someone else's hold, not the calling thread's: a later untimed wait of this thread for it is an
    # ordinary wait (ended by clear()), never a DeadlockError.
    table.disown(name, token)


def default_locker() -> Locker:
    """The locker behind the module-level verbs in test mode when ``kannuki.configure()`` was never called."""
    global _default_locker
    with _guard:
        if _override.TABLE is None:
            raise RuntimeError("default_locker() needs test mode: call kannuki.testing.enable() first")
        if _default_locker is None:
            _default_locker = Locker("memory://kannuki-test-mode")
        return _default_locker


@contextlib.contextmanager
def test_mode() -> Iterator[ModuleType]:
    """Test mode for the ``with`` block; yields this module (for ``simulate_lock_held`` ...).

    When test mode was already on, it stays on (and keeps its locks) after
    the block; otherwise it is cleared and turned off.
    """
    import kannuki.testing as this

    was_enabled = is_enabled()
    enable()
    try:
        yield this
    finally:
        if not was_enabled:
            disable()


test_mode.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name
