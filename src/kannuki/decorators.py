"""Decorators that run a function while holding a lock: ``locked`` and ``unique``.

``locked(key)`` takes the key from a ``str.format`` template filled with the
call's arguments (or from a callable); ``unique()`` takes it from the
function's name and a canonical encoding of its arguments, so one call with
given arguments runs at a time across processes and hosts. Both work on plain
and ``async def`` functions and under task decorators such as Celery's
``@app.task`` (``bind=True`` included)::

    @kannuki.locked("import/{import_id}", on_conflict="skip")
    def run_import(import_id): ...

    @app.task
    @locker.unique()
    def send_report(account_id, month): ...

``locker.locked(...)`` and ``locker.unique(...)`` are the same decorators
bound to one locker; these module-level ones use the default locker
(``kannuki.configure``), looked up at each call, unless ``locker=`` is given.
The implementation lives in :mod:`kannuki._decorate` (the API layer).
"""

from __future__ import annotations

from kannuki._decorate import (
    MAX_ENCODED_ARGS,
    ON_CONFLICT,
    LockDecorator,
    SkipDecorator,
    locked,
    unique,
    unique_key,
)

__all__ = [
    "MAX_ENCODED_ARGS",
    "ON_CONFLICT",
    "LockDecorator",
    "SkipDecorator",
    "locked",
    "unique",
    "unique_key",
]
