"""Pick the core implementation once, at import: the compiled ``_native`` or the pure twin.

``KANNUKI_NO_EXTENSIONS`` set to anything but "" or "0" forces the pure one.
``NATIVE`` says which was loaded; ``FALLBACK_REASON`` says why, when it is pure.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = [
    "FALLBACK_REASON",
    "IMPLEMENTATION",
    "MAX_NAME_BYTES",
    "NATIVE",
    "Backoff",
    "Counters",
    "LockTable",
    "full_name",
    "hash_text_extended",
    "lock_id",
    "name_and_id",
]

FALLBACK_REASON: str | None = None
IMPLEMENTATION: ModuleType

if os.environ.get("KANNUKI_NO_EXTENSIONS", "") not in ("", "0"):
    FALLBACK_REASON = "KANNUKI_NO_EXTENSIONS is set"
else:
    try:
        from kannuki import _native as IMPLEMENTATION
    except ImportError as exc:  # not built, or built for another interpreter
        FALLBACK_REASON = f"the compiled core did not load: {exc}"

if FALLBACK_REASON is not None:
    from kannuki import _pure as IMPLEMENTATION

    logging.getLogger("kannuki").debug("using the pure-Python core (%s)", FALLBACK_REASON)

NATIVE: bool = FALLBACK_REASON is None

if TYPE_CHECKING:
    # The type checker sees one set of core names, typed by the compiled twin's hand-written stub
    # (_native.pyi, checked against the built module by stubtest), so `LockTable` etc. serve both
    # as constructors and in annotations. Both twins are held to the contract in _coreapi below:
    # mypy fails here if either drifts from it.
    from kannuki import _native, _pure
    from kannuki._coreapi import BackoffProtocol, CountersProtocol, HashFunctions, LockTableProtocol
    from kannuki._native import (
        MAX_NAME_BYTES,
        Backoff,
        Counters,
        LockTable,
        full_name,
        hash_text_extended,
        lock_id,
        name_and_id,
    )

    _native_hashing: HashFunctions = _native
    _pure_hashing: HashFunctions = _pure
    _native_backoff: type[BackoffProtocol] = _native.Backoff
    _pure_backoff: type[BackoffProtocol] = _pure.Backoff
    _native_counters: type[CountersProtocol] = _native.Counters
    _pure_counters: type[CountersProtocol] = _pure.Counters
    _native_table: type[LockTableProtocol] = _native.LockTable
    _pure_table: type[LockTableProtocol] = _pure.LockTable
else:
    Backoff = IMPLEMENTATION.Backoff
    Counters = IMPLEMENTATION.Counters
    LockTable = IMPLEMENTATION.LockTable
    MAX_NAME_BYTES: int = IMPLEMENTATION.MAX_NAME_BYTES
    full_name = IMPLEMENTATION.full_name
    hash_text_extended = IMPLEMENTATION.hash_text_extended
    lock_id = IMPLEMENTATION.lock_id
    name_and_id = IMPLEMENTATION.name_and_id
