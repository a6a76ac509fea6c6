"""Hand-off tickets: a held lock passed from one process to another (``Lock.detach`` / ``Locker.adopt``).

A ticket is a short JSON text naming one hold in a store: the store's scheme,
the key, its full name and ID, shared or not, the fencing token, the lease
length and the store's own owner value. It carries no secret beyond what the
store already checks on release (the token, or Redis's owner value), so a
stale ticket can never free a newer holder: every release is the store's
compare-and-delete.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from kannuki.backends._types import Grant

__all__ = ["VERSION", "Ticket", "parse", "ticket_for"]

VERSION = 1


class Ticket(NamedTuple):
    """The fields of a parsed ticket."""

    store: str
    key: str
    grant: Grant


def ticket_for(store: str, key: str, grant: Grant) -> str:
    """The ticket text of ``grant`` on the store ``store`` (its scheme), for the lock ``key``.

    The store's owner value (``grant.data``) is text, or ASCII bytes (Redis's), carried as text.
    """
    return json.dumps(
        {
            "kannuki": VERSION,
            "store": store,
            "key": key,
            "name": grant.name,
            "lock_id": grant.lock_id,
            "shared": grant.shared,
            "token": grant.token,
            "ttl": grant.ttl,
            "data": grant.data.decode("ascii") if isinstance(grant.data, bytes) else grant.data,
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def parse(ticket: Any) -> Ticket:
    """The store, key and rebuilt grant of ``ticket``; TypeError / ValueError naming ``ticket`` when it is not one."""
    if not isinstance(ticket, str):
        raise TypeError(
            f"ticket must be the str that Lock.detach() returned, not {type(ticket).__qualname__}"
        )
    try:
        fields = json.loads(ticket)
    except ValueError:
        fields = None
    if not isinstance(fields, dict) or fields.get("kannuki") != VERSION:
        raise ValueError(f"ticket is not a kannuki hand-off ticket (from Lock.detach()): {ticket[:80]!r}")
    expected: dict[str, Any] = {
        "store": str,
        "key": str,
        "name": str,
        "lock_id": int,
        "shared": bool,
        "token": int,
        "ttl": (int, float, type(None)),
        "data": (str, type(None)),
    }
    for field, kind in expected.items():
        value = fields.get(field)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"ticket has a bad {field!r} field ({value!r}): {ticket[:80]!r}")
    if fields["token"] <= 0 or (fields["ttl"] is not None and not fields["ttl"] > 0):
        raise ValueError(f"ticket has a bad token or ttl: {ticket[:80]!r}")
    ttl = None if fields["ttl"] is None else float(fields["ttl"])
    grant = Grant(
        fields["name"], fields["lock_id"], fields["shared"], fields["token"], ttl, data=fields["data"]
    )
    return Ticket(fields["store"], fields["key"], grant)
