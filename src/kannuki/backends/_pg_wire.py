"""The PostgreSQL statements as kannuki sends them through libpq itself (psycopg's ``pgconn``).

On its own connections the backend skips psycopg's cursor layer: each
statement of :mod:`kannuki.backends._pg_sql` becomes a :class:`Statement`,
its ``%s`` placeholders numbered ``$1 ... $n`` once, and goes out with
``send_query_params`` (one round trip: parse, bind, execute) or, once the
connection is known to reach the server directly, as a named prepared
statement (``send_query_prepared``). The statements of the hot path (try,
wait, release) carry binary parameters and results, decoded by their known
column types; every other one goes in text and is decoded by the column's
type OID. Nothing here touches a connection or imports a driver: the
exchange itself (send, wait with a deadline, read) is the backend's.

Names here are stable: other modules import them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from kannuki.backends import _pg_sql as sql

__all__ = ["FATAL_ERROR", "INVALID_STATEMENT_NAME", "Statement", "statement"]

# PGresult statuses (psycopg.pq.ExecStatus), by value, so no driver import is needed.
FATAL_ERROR = 7
# The SQLSTATE of a prepared statement that the session no longer has (DISCARD ALL / DEALLOCATE).
INVALID_STATEMENT_NAME = "26000"

# Type OIDs of the parameters and columns kannuki uses.
_BOOL, _INT8, _INT2, _INT4, _TEXT, _OID = 16, 20, 21, 23, 25, 26
_FLOAT4, _FLOAT8, _NUMERIC = 700, 701, 1700
_TEXT_FORMAT, _BINARY_FORMAT = 0, 1

# Binary results: what a column of the hot statements is.
_RAW, _INT, _BOOLEAN = 0, 1, 2  # bytes as sent (void: b""), a big-endian integer, a bool
# Binary parameters: the size of each integer type sent so.
_BINARY_SIZES = {_INT8: 8, _INT4: 4}

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")

Decoder = Callable[[bytes], Any]


def _encode_text(value: Any) -> bytes | None:
    """Any parameter as text for the server to read by the placeholder's context (type OID 0, unknown)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, (list, tuple)):  # an array literal of ints or bools: {1,2,3}
        return b"{" + b",".join(_encode_text(item) or b"NULL" for item in value) + b"}"
    return str(value).encode()


def _text_bool(data: bytes) -> bool:
    return data == b"t"


def _text_str(data: bytes) -> str:
    return data.decode()


# Text results: the decoder of a column by its type OID (anything else is a str).
_TEXT_DECODERS: dict[int, Decoder] = {
    _BOOL: _text_bool,
    _INT2: int,
    _INT4: int,
    _INT8: int,
    _OID: int,
    _FLOAT4: float,
    _FLOAT8: float,
    _NUMERIC: float,
}


class Statement:
    """One statement ready for libpq: its text with ``$n`` placeholders and how its values travel.

    ``params(values)`` gives the parameter list for ``send_query_*`` (a dict
    for named placeholders, else a sequence); ``row(result)`` /
    ``rows(result)`` decode a PGresult into tuples. ``name`` (bytes) is the
    prepared statement's name, for statements worth preparing; None for the
    others.
    """

    __slots__ = ("_kinds", "_sizes", "formats", "name", "names", "result_format", "text", "types")

    def __init__(
        self,
        query: str,
        *,
        name: bytes | None = None,
        params: Sequence[int] | None = None,
        columns: Sequence[int] | None = None,
    ) -> None:
        names: list[str] = []  # one per $n: the dict key of a named placeholder, else its position

        def number(match: re.Match[str]) -> str:
            key = match.group(1)
            if key is None:
                names.append(str(len(names)))
            elif key not in names:
                names.append(key)
            return f"${len(names) if key is None else names.index(key) + 1}"

        self.text = _PLACEHOLDER.sub(number, query).encode()
        named = "%(" in query
        # Named placeholders: the dict keys in $n order; plain ones: None (the values go in order).
        self.names: tuple[str, ...] | None = tuple(names) if named else None
        self.name = name
        if params is None:  # text, types inferred by the server from the placeholders' contexts
            self.types: Sequence[int] | None = None
            self.formats: Sequence[int] | None = None
            self._sizes: tuple[int, ...] = (0,) * len(names)
        else:  # binary for the integers, text for the rest
            self.types = tuple(params)
            self._sizes = tuple(_BINARY_SIZES.get(oid, 0) for oid in params)
            self.formats = tuple(_BINARY_FORMAT if size else _TEXT_FORMAT for size in self._sizes)
        self._kinds = None if columns is None else tuple(columns)
        if columns is not None and (len(columns) != 2 or columns[1] != _INT):
            raise ValueError("a binary statement returns two columns, the second the server PID")
        self.result_format = _TEXT_FORMAT if columns is None else _BINARY_FORMAT

    def params(self, values: Any) -> list[bytes | None]:
        """The encoded parameters of ``values`` (a sequence, or a dict for named placeholders)."""
        if values is None:
            return []
        if self.names is not None:
            values = [values[key] for key in self.names]
        if self._kinds is not None:  # the hot path: binary integers, text strings
            return [
                None
                if value is None
                else value.to_bytes(size, "big", signed=True)
                if size
                else value.encode()
                for size, value in zip(self._sizes, values, strict=False)
            ]
        return [_encode_text(value) for value in values]

    def row(self, result: Any) -> tuple[Any, ...] | None:
        """The first row of ``result``, decoded (None when it has none)."""
        if result.ntuples == 0:
            return None
        kinds = self._kinds
        if kinds is None:
            return self._decode(result, 0)
        # The hot path: two binary columns, the second the server PID.
        value = result.get_value
        first, pid = value(0, 0), value(0, 1)
        if first is not None and kinds[0] != _RAW:
            first = int.from_bytes(first, "big", signed=True) if kinds[0] == _INT else first == b"\x01"
        return first, None if pid is None else int.from_bytes(pid, "big", signed=True)

    def rows(self, result: Any) -> list[tuple[Any, ...]]:
        """Every row of ``result``, decoded (a text result: the hot statements return one row)."""
        return [self._decode(result, index) for index in range(result.ntuples)]

    def _decode(self, result: Any, index: int) -> tuple[Any, ...]:
        """One row of a text result, each column decoded by its type."""
        value, kind = result.get_value, result.ftype
        row: list[Any] = []
        for column in range(result.nfields):
            data = value(index, column)
            row.append(None if data is None else _TEXT_DECODERS.get(kind(column), _text_str)(data))
        return tuple(row)


def _hot() -> dict[str, Statement]:
    """The statements of the hot path, prepared where they may be, binary both ways."""
    found: dict[str, Statement] = {}

    def add(query: str, params: Sequence[int], columns: Sequence[int]) -> None:
        found[query] = Statement(query, name=b"kannuki_%d" % len(found), params=params, columns=columns)

    for shared in (False, True):
        add(sql.TRY_LOCK[shared], (_INT8,), (_BOOLEAN, _INT))
        add(sql.TRY_LOCK_FENCED[shared], (_INT8,), (_INT, _INT))
        add(sql.TIMED_WAIT_LOCK[shared], (_TEXT, _INT8), (_RAW, _INT))
        add(sql.TIMED_WAIT_LOCK_FENCED[shared], (_TEXT, _INT8), (_INT, _INT))
        add(sql.UNLOCK_CHECKED[shared], (_INT4, _INT8), (_BOOLEAN, _INT))
    return found


_STATEMENTS = _hot()


def statement(query: str) -> Statement:
    """The :class:`Statement` of ``query`` (one of :mod:`kannuki.backends._pg_sql`'s), made once."""
    found = _STATEMENTS.get(query)
    if found is None:
        found = _STATEMENTS[query] = Statement(query)
    return found
