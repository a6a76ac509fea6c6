"""fork() bookkeeping shared by the sync and async API: one generation counter, one list of owners to reset.

In a forked child no lock of the parent is held by the child (the child has
none of the parent's threads, and a session lock belongs to the parent's
connection). Every hold owner registers here; in the child each forgets its
holds, its worker and its backend's connections (without closing them: they
are the parent's), and ``GENERATION`` moves on so that a Lock object copied
into the child answers "not held".
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["GENERATION", "track"]

GENERATION = 0


class _Forgets(Protocol):
    def forget_after_fork(self) -> None: ...


_owners: weakref.WeakSet[_Forgets] = weakref.WeakSet()


def track(owner: _Forgets) -> None:
    """Call ``owner.forget_after_fork()`` in every forked child while ``owner`` lives."""
    _owners.add(owner)


def _in_child() -> None:
    global GENERATION
    GENERATION += 1
    for owner in list(_owners):
        owner.forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_child)
