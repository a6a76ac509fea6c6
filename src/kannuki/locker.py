"""``kannuki.configure()`` and the module-level verbs that use the default locker.

``Locker`` itself is generated from the async source (:mod:`kannuki._locker`);
it is re-exported here for ``from kannuki.locker import Locker``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

from kannuki._default import get_locker, replace
from kannuki._lock import Lock
from kannuki._locker import Locker

__all__ = ["Locker", "configure", "get_locker", "held", "lock", "lock_or_raise", "try_lock", "with_lock"]

R = TypeVar("R")


def configure(url: Any = None, **options: Any) -> Locker:
    """Set the module default locker used by ``kannuki.lock``, ``with_lock``, ``try_lock`` ... and return it.

    ``url`` defaults to the ``KANNUKI_URL`` environment variable. The previous
    default locker, if any, is closed.
    """
    locker = Locker(url, **options)
    previous = replace(locker)
    if previous is not None:
        previous.close()
    return locker


def lock(key: str, **options: Any) -> Lock:
    """``get_locker().lock(key, ...)``."""
    return get_locker().lock(key, **options)


def with_lock(key: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R | Literal[False]:
    """``get_locker().with_lock(...)``."""
    return get_locker().with_lock(key, fn, *args, **kwargs)


def try_lock(key: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R | Literal[False]:
    """``get_locker().try_lock(...)``."""
    return get_locker().try_lock(key, fn, *args, **kwargs)


def lock_or_raise(key: str, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
    """``get_locker().lock_or_raise(...)``."""
    return get_locker().lock_or_raise(key, fn, *args, **kwargs)


def held(key: str) -> bool:
    """``get_locker().held(key)``."""
    return get_locker().held(key)
