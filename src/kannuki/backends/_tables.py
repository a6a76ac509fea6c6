"""Process-wide lock tables, one per store identity, shared by every backend of this process that names it.

A backend whose waiters should queue in-process before they reach the store
(``memory://NAME``; the per-server queues of mysql and postgresql) asks for
the table of its store's identity here, so two lockers on one store share one
queue and one token sequence. In a forked child every table is emptied: the
child has none of the parent's threads, so their holds and waits are void.

Deadlocks between threads are found across all of these tables at once: the
core twin keeps one process-wide registry of the threads waiting in any
LockTable, and a wait that would close a wait-for cycle (a thread waiting for
a key it holds, or for a thread that waits, directly or not, for it) raises
``DeadlockError`` instead (see ``kannuki._coreapi.LockTableProtocol.acquire``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Hashable
from typing import Any

from kannuki._core import LockTable

__all__ = ["object_table", "process_table"]

_tables: dict[Hashable, LockTable] = {}
_tables_guard = threading.Lock()


def process_table(identity: Hashable) -> LockTable:
    """The process-wide table of ``identity`` (created on first use; lives as long as the process).

    ``identity`` names the store, e.g. ``("mysql", "host:3306")``; start it
    with the scheme so stores of different backends never share a table.
    """
    table = _tables.get(identity)
    if table is None:
        with _tables_guard:
            table = _tables.setdefault(identity, LockTable())
    return table


def object_table(scheme: str, obj: Any) -> LockTable:
    """The process-wide table of one live object (a user's connection or pool), dropped when it is collected.

    Keyed by ``id(obj)``: a later object that reuses the ID must not inherit
    the queue of a dead one, so the entry goes with the object where it can
    be weakly referenced.
    """
    identity = (scheme, "object", id(obj))
    if identity not in _tables:
        with _tables_guard:
            if identity not in _tables:
                _tables[identity] = LockTable()
                try:
                    weakref.finalize(obj, _tables.pop, identity, None)
                except TypeError:  # not weakly referenceable: kept for the life of the process
                    pass
    return _tables[identity]


def _reset_tables_in_child() -> None:
    global _tables_guard
    _tables_guard = threading.Lock()
    for table in _tables.values():
        table.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_tables_in_child)
