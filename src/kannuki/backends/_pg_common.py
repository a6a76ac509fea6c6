"""Helpers of the PostgreSQL backend (sync and async alike) besides its SQL (that is :mod:`kannuki.backends._pg_sql`).

Option and URL checks, the connect arguments, recognising psycopg objects and
errors without importing psycopg, and the checks on a caller's transaction.
psycopg itself is imported only by :func:`psycopg`, when a backend connects.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kannuki.backends._types import NO_WAIT_CALLBACK
from kannuki.errors import ConfigurationError

__all__ = [
    "ACTIVE",
    "IDLE",
    "INERROR",
    "INTRANS",
    "KEEPALIVES",
    "TCP_USER_TIMEOUT_MS",
    "check_number",
    "check_transaction_status",
    "checked_url",
    "connect_kwargs",
    "has_class",
    "is_driver_error",
    "outside_transaction",
    "pop_connect_options",
    "psycopg",
    "safe_url",
    "try_first",
]

# psycopg's libpq states (psycopg.pq.TransactionStatus), by value, so no driver import is needed.
IDLE, ACTIVE, INTRANS, INERROR = 0, 1, 2, 3

# TCP settings of the connections kannuki opens, unless the URL sets them: a network that goes
# silent ends the connection (keepalive probes after 10 s idle; sent data unacknowledged for 20 s),
# so a held lock's loss is seen and a statement's wait ends. (A server whose processes stopped but
# whose kernel still acknowledges is caught by the statements' own deadline instead.)
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 20_000

# Options of a URL locker: its own connections. Name -> default.
_CONNECT_OPTIONS = {"pool_size": 4, "connect_timeout": 5.0, "application_name": "kannuki"}


def psycopg() -> Any:
    """The psycopg module; ConfigurationError naming the extra to install when it is missing."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigurationError(
            "the postgresql backend needs psycopg 3: install kannuki[postgres]"
        ) from None
    return psycopg


def safe_url(url: str) -> str:
    """``url`` for messages: user, host, port and database; no password, no query."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_number(name: str, value: Any, *, minimum: float, integer: bool = False) -> None:
    """ConfigurationError naming ``name`` unless ``value`` is a finite number (an int if ``integer``) >= ``minimum``."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not (minimum <= value < math.inf):
        kind = "an integer" if integer else "a number"
        raise ConfigurationError(f"{name} must be {kind} >= {minimum:g}, not {value!r}")


def pop_connect_options(options: dict[str, Any]) -> dict[str, Any]:
    """Take ``pool_size``, ``connect_timeout`` and ``application_name`` out of ``options`` (defaults filled in).

    Check them with :func:`checked_url` once the unknown options are refused.
    """
    return {name: options.pop(name, default) for name, default in _CONNECT_OPTIONS.items()}


def checked_url(url: str, connect: dict[str, Any]) -> str:
    """``url`` with its scheme spelled ``postgresql``, after checking it and the ``connect`` options."""
    check_number("pool_size", connect["pool_size"], minimum=0, integer=True)
    check_number("connect_timeout", connect["connect_timeout"], minimum=0.001)
    if not isinstance(connect["application_name"], str):
        raise ConfigurationError(f"application_name must be a str, not {connect['application_name']!r}")
    scheme = urlsplit(url).scheme
    if scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigurationError(f"url must start with postgresql:// or postgres://, not {url!r}")
    return "postgresql" + url[len(scheme) :]  # libpq knows both; one spelling for the messages


def connect_kwargs(driver: Any, url: str, connect_timeout: float, application_name: str) -> dict[str, Any]:
    """Keyword arguments of psycopg's ``connect`` for a connection kannuki owns (autocommit)."""
    kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": max(1, math.ceil(connect_timeout))}
    given = driver.conninfo.conninfo_to_dict(url)
    if "application_name" not in given:
        kwargs["application_name"] = application_name
    wanted: dict[str, Any] = dict(KEEPALIVES)
    if driver.pq.version() >= 120000:  # libpq knows tcp_user_timeout from 12 on
        wanted["tcp_user_timeout"] = TCP_USER_TIMEOUT_MS
    kwargs.update((name, value) for name, value in wanted.items() if name not in given)
    return kwargs


def has_class(obj: Any, package: str, class_name: str) -> bool:
    """Is ``obj`` an instance of ``package``'s class ``class_name``? Asked without importing ``package``."""
    return any(
        klass.__name__ == class_name and klass.__module__.split(".")[0] == package
        for klass in type(obj).__mro__
    )


def is_driver_error(exc: BaseException) -> bool:
    """Was ``exc`` raised by psycopg or psycopg_pool?"""
    return type(exc).__module__.split(".")[0] in ("psycopg", "psycopg_pool")


def check_transaction_status(conn: Any, how_to_open: str) -> None:
    """ConfigurationError unless ``conn`` (given as ``transaction=``) is open, inside a transaction, not failed.

    ``how_to_open`` shows how to open one, e.g. ``with conn.transaction():``.
    """
    status = conn.info.transaction_status
    if conn.closed:
        raise ConfigurationError("transaction= is a closed connection")
    if status == INERROR:
        raise ConfigurationError("the transaction given as transaction= has failed: roll it back first")
    if status == IDLE and conn.autocommit:
        raise ConfigurationError(
            "transaction-level locks need an open transaction, and this autocommit connection has none: "
            f"take the lock inside `{how_to_open}`"
        )


def outside_transaction(conn: Any) -> bool:
    """Autocommit with no transaction open: one statement is its own transaction."""
    return bool(conn.autocommit) and conn.info.transaction_status == IDLE


def try_first(conn: Any, timeout: float | None, on_wait: Any) -> bool:
    """Whether a blocking acquire should try before it waits on ``conn``.

    The try is what decides that a wait is coming, so it is needed when someone
    listens (``on_wait``) or for a single try (timeout 0). Otherwise, where the
    wait is one statement (``outside_transaction``), it would only add a round
    trip: an uncontended wait returns at once.
    """
    return timeout == 0 or on_wait is not NO_WAIT_CALLBACK or not outside_transaction(conn)
