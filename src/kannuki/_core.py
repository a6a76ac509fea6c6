"""Pick the core implementation once, at import: the compiled ``_native`` or the pure twin.

``KANNUKI_NO_EXTENSIONS`` set to anything but "" or "0" forces the pure one.
``NATIVE`` says which was loaded; ``FALLBACK_REASON`` says why, when it is pure.
"""

from __future__ import annotations

import importlib
import importlib.machinery
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
    "LockBase",
    "LockTable",
    "PlainPath",
    "SyncLockBase",
    "TokenSet",
    "full_name",
    "hash_text_extended",
    "lock_id",
    "name_and_id",
]

FALLBACK_REASON: str | None = None
IMPLEMENTATION: ModuleType

# Written into the built package by setup.py when it built no compiled core, with the reason.
_FALLBACK_NOTE = "_fallback_reason.txt"


def _not_built_reason() -> str:
    """Why there is no ``kannuki._native`` file to import, as far as the installed package tells."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, _FALLBACK_NOTE), encoding="utf-8") as note:
            recorded = note.read().strip()
    except OSError:
        recorded = ""
    if recorded:
        return f"the compiled core was not built when kannuki was installed: {recorded}"
    try:
        others = sorted(
            name for name in os.listdir(here) if name.startswith("_native.") and name != "_native.pyi"
        )
    except OSError:
        others = []
    if others:
        suffixes = ", ".join(importlib.machinery.EXTENSION_SUFFIXES)
        return (
            f"the compiled core here ({', '.join(others)}) was built for another Python; "
            f"this one loads {suffixes}: reinstall kannuki for this interpreter"
        )
    return (
        "the compiled core is not installed (kannuki._native is missing: a build without a C compiler, "
        "or a source tree that was never built)"
    )


if os.environ.get("KANNUKI_NO_EXTENSIONS", "") not in ("", "0"):
    FALLBACK_REASON = "KANNUKI_NO_EXTENSIONS is set"
else:
    try:
        # import_module, not `from kannuki import _native`: a missing submodule of a package that is
        # still initialising would otherwise be reported as "most likely due to a circular import".
        IMPLEMENTATION = importlib.import_module("kannuki._native")
    except ModuleNotFoundError as exc:
        if exc.name == "kannuki._native":
            FALLBACK_REASON = _not_built_reason()
        else:  # the compiled module is there but needs a module that is not
            FALLBACK_REASON = f"the compiled core did not load: {type(exc).__name__}: {exc}"
    except ImportError as exc:  # there, but built for another interpreter, or a broken build
        FALLBACK_REASON = f"the compiled core is installed but did not load: {type(exc).__name__}: {exc}"

if FALLBACK_REASON is not None:
    from kannuki import _pure as IMPLEMENTATION

    logging.getLogger("kannuki").debug("using the pure-Python core: %s", FALLBACK_REASON)

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
        LockBase,
        LockTable,
        PlainPath,
        SyncLockBase,
        TokenSet,
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
    LockBase = IMPLEMENTATION.LockBase
    PlainPath = IMPLEMENTATION.PlainPath
    SyncLockBase = IMPLEMENTATION.SyncLockBase
    TokenSet = IMPLEMENTATION.TokenSet
    MAX_NAME_BYTES: int = IMPLEMENTATION.MAX_NAME_BYTES
    full_name = IMPLEMENTATION.full_name
    hash_text_extended = IMPLEMENTATION.hash_text_extended
    lock_id = IMPLEMENTATION.lock_id
    name_and_id = IMPLEMENTATION.name_and_id
