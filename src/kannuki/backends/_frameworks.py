"""Connections a framework already holds: SQLAlchemy engines, connections and sessions, Django's connections.

A locker made from one of these locks through the driver connection underneath
(psycopg 3 on PostgreSQL, mysqlclient on MySQL / MariaDB), with the guarantees
of a locker made from that driver's own connection or pool:

- an ``Engine`` (or ``AsyncEngine``) is a pool: each hold checks a connection
  out and gives it back only once nothing is held on it;
- a ``Connection`` (or ``AsyncConnection``) and a Django connection are one
  connection the user owns: every lock lives on it, kannuki never closes it;
- an ORM ``Session`` (or ``AsyncSession``) gives its connection back to the
  pool when its transaction ends, so a session lock taken through it is taken
  on its bind (the engine's pool, or the connection it is bound to), and a
  transaction-level lock (``transaction=True``) joins the session's transaction.

Neither framework is imported here: both are optional, so their objects are
recognised by the module and name of their class, and Django's connection
registry is imported only when a Django connection is given.
"""

from __future__ import annotations

import importlib
from typing import Any

from kannuki.errors import ConfigurationError

__all__ = [
    "ENGINE",
    "ONE_CONNECTION",
    "ORM_SESSION",
    "EngineLender",
    "connect_params",
    "describe",
    "driver_connection",
    "is_async",
    "kind",
    "session_bind",
    "store_of",
]

# What a framework object is to kannuki.
ENGINE = "engine"  # a pool: a connection per hold
ONE_CONNECTION = "connection"  # the user's own connection: every lock lives on it
ORM_SESSION = "session"  # session locks on its bind, transaction-level locks in its transaction

_SQLALCHEMY = {
    "Engine": ENGINE,
    "AsyncEngine": ENGINE,
    "Connection": ONE_CONNECTION,
    "AsyncConnection": ONE_CONNECTION,
    "Session": ORM_SESSION,
    "AsyncSession": ORM_SESSION,
}
_ASYNC_CLASSES = frozenset({"AsyncEngine", "AsyncConnection", "AsyncSession"})

_SUPPORTED = (
    "kannuki locks through SQLAlchemy's postgresql+psycopg (psycopg 3, sync or async) and "
    "mysql+mysqldb / mariadb+mysqldb (mysqlclient) dialects, and Django's postgresql backend on "
    "psycopg 3 and its mysql backend"
)


def _sqlalchemy_class(obj: Any) -> str | None:
    """The name of the SQLAlchemy class of ``obj`` that kannuki knows, or None."""
    for klass in type(obj).__mro__:
        if klass.__name__ in _SQLALCHEMY and klass.__module__.split(".")[0] == "sqlalchemy":
            return klass.__name__
    return None


def _is_django(obj: Any) -> bool:
    """A Django database wrapper, or the ``django.db.connection`` proxy in front of one."""
    return any(
        klass.__module__.split(".")[0] == "django"
        and klass.__name__ in ("BaseDatabaseWrapper", "ConnectionProxy")
        for klass in type(obj).__mro__
    )


def _django_wrapper(obj: Any) -> Any:
    """This thread's database wrapper behind ``obj`` (the ``django.db.connection`` proxy resolves per thread)."""
    # Imported here, and by name: Django is optional (and ships no type information).
    connections = importlib.import_module("django.db").connections
    return connections[obj.alias]


def kind(obj: Any) -> str | None:
    """ENGINE, ONE_CONNECTION or ORM_SESSION for a framework object kannuki can lock through; None for others."""
    name = _sqlalchemy_class(obj)
    if name is not None:
        return _SQLALCHEMY[name]
    return ONE_CONNECTION if _is_django(obj) else None


def is_async(obj: Any) -> bool:
    """Is ``obj`` one of SQLAlchemy's asyncio objects?"""
    return _sqlalchemy_class(obj) in _ASYNC_CLASSES


def _dialect(obj: Any) -> tuple[str, str, bool]:
    """(database, driver, asynchronous driver) of a framework object."""
    name = _sqlalchemy_class(obj)
    if name is None:  # Django
        wrapper = _django_wrapper(obj)
        return str(wrapper.vendor), wrapper.Database.__name__.split(".")[0].lower(), False
    if name == "Session":
        dialect = obj.get_bind().dialect
    elif name == "AsyncSession":
        dialect = obj.sync_session.get_bind().dialect
    else:
        dialect = obj.dialect
    return str(dialect.name), str(dialect.driver), bool(getattr(dialect, "is_async", False))


def store_of(obj: Any, *, asynchronous: bool) -> str | None:
    """``"postgresql"`` or ``"mysql"``: the store a framework object locks on; None when ``obj`` is none of them.

    ConfigurationError when it is one, on a database or driver kannuki does not lock
    through, or on the wrong side (an asyncio object for a sync Locker, and so on).
    """
    if kind(obj) is None:
        return None
    what = type(obj).__qualname__
    if is_async(obj) and not asynchronous:
        raise ConfigurationError(f"a SQLAlchemy {what} is asyncio: make an AsyncLocker of it, not a Locker")
    database, driver, async_driver = _dialect(obj)
    if database == "postgresql" and driver == "psycopg":
        if asynchronous and not async_driver:
            origin = "Django's" if _is_django(obj) else "this SQLAlchemy"
            raise ConfigurationError(
                f"{origin} {what} drives psycopg synchronously: make a Locker of it, or an AsyncLocker of "
                "an AsyncEngine / AsyncConnection / AsyncSession (create_async_engine('postgresql+psycopg://...'))"
            )
        return "postgresql"
    if database in ("mysql", "mariadb") and driver == "mysqldb":
        # mysqlclient only blocks: an AsyncLocker drives it from worker threads, as with a MySQLdb connection.
        return "mysql"
    origin = "a Django connection" if _is_django(obj) else f"a SQLAlchemy {what}"
    raise ConfigurationError(
        f"url is {origin} on {database} through the {driver!r} driver, which kannuki cannot lock through: "
        f"{_SUPPORTED}"
    )


def driver_connection(obj: Any) -> Any:
    """The driver connection under a SQLAlchemy (Async)Connection or a Django connection.

    A Django connection is opened first if it is not yet; an AsyncConnection must have
    been started (``await engine.connect()`` or ``async with engine.connect()``).
    ConfigurationError for a closed or invalidated one.
    """
    name = _sqlalchemy_class(obj)
    if name is None:
        wrapper = _django_wrapper(obj)
        wrapper.ensure_connection()
        return wrapper.connection
    if name == "AsyncConnection":
        if obj.sync_connection is None:
            raise ConfigurationError(
                "the AsyncConnection is not started: use `async with engine.connect() as conn:` "
                "or `conn = await engine.connect()` first"
            )
        obj = obj.sync_connection
    if obj.closed or obj.invalidated:
        raise ConfigurationError("the SQLAlchemy Connection is closed or invalidated")
    return obj.connection.driver_connection


def describe(obj: Any) -> str:
    """A framework object for messages: ``SQLAlchemy Engine postgresql+psycopg://user@host/db``."""
    name = _sqlalchemy_class(obj)
    if name is None:
        return f"Django database {obj.alias!r}"
    if name in ("Session", "AsyncSession"):
        return f"SQLAlchemy {name}"
    url = obj.url if name.endswith("Engine") else obj.engine.url
    return f"SQLAlchemy {name} {url.render_as_string(hide_password=True)}"


def session_bind(obj: Any) -> Any:
    """What an ORM session checks its connections out of: an Engine or a Connection (asyncio ones for an AsyncSession)."""
    if _sqlalchemy_class(obj) == "AsyncSession":
        bind = obj.bind
        if bind is None:
            raise ConfigurationError(
                "the AsyncSession has no single bind (binds per mapper): make the locker of its AsyncEngine"
            )
        return bind
    return obj.get_bind()


def connect_params(engine: Any) -> dict[str, Any]:
    """The keyword arguments an engine's dialect passes to its driver's ``connect()`` (host, user, ...)."""
    _, kwargs = engine.dialect.create_connect_args(engine.url)
    params = dict(kwargs)
    # mysqlclient's older spellings, as SQLAlchemy passes them, in the ones the mysql backend reads.
    for old, new in (("db", "database"), ("passwd", "password")):
        if old in params:
            params.setdefault(new, params.pop(old))
    if "unix_socket" not in params:  # the driver's defaults, spelled out for the messages
        params.setdefault("host", "localhost")
        params.setdefault("port", 3306)
    return params


class EngineLender:
    """Driver connections checked out of a SQLAlchemy Engine and back in, by blocking calls (the mysql backend's).

    A borrowed connection is switched to autocommit, as kannuki's own connections
    are (each statement commits on its own), and switched back before it goes back.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        # id(driver connection) -> (the engine's connection it came in, its autocommit before)
        self._out: dict[int, tuple[Any, bool]] = {}

    def borrow(self, into: list[Any]) -> None:
        """Check a driver connection out of the engine's pool, into ``into``.

        There, and not as a return value, so that a caller interrupted as the
        checkout ends (a cancelled task, whose worker thread ran on) still finds it to give back.
        """
        handle = self.engine.connect()
        try:
            db = driver_connection(handle)
            before = bool(db.get_autocommit())
            db.autocommit(True)
        except BaseException:
            handle.invalidate()
            handle.close()
            raise
        self._out[id(db)] = (handle, before)
        into.append(db)

    def give_back(self, db: Any, broken: bool) -> None:
        """Back to the engine's pool, as it was; ``broken``: invalidated instead (the pool closes it)."""
        entry = self._out.pop(id(db), None)
        if entry is None:  # given back already
            return
        handle, before = entry
        try:
            if broken:
                handle.invalidate()
            else:
                db.autocommit(before)
        except Exception:
            handle.invalidate()
        finally:
            handle.close()

    def forget(self) -> None:
        """In a forked child: the parent's borrowed connections are not ours to give back."""
        self._out = {}
