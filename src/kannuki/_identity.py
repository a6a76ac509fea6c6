"""Who a record is, for lock keys: its namespace and primary key.

``namespace(cls)`` and ``primary_key_value(record)`` make the keys of record
locks (:mod:`kannuki.records`); ``record_identity(value)`` lets ``unique()``
(:mod:`kannuki._decorate`) encode a saved record among a call's arguments.
Django and SQLAlchemy are recognised without importing them: a model class is
only looked at as one when its library is already imported.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["namespace", "primary_key_value", "record_identity"]


def namespace(cls: type) -> str:
    """The first part of a record lock's key for records of ``cls``.

    ``__kannuki_namespace__`` beats ``__tablename__`` (SQLAlchemy) beats
    ``_meta.db_table`` (Django) beats the class name in lower case.
    """
    explicit = getattr(cls, "__kannuki_namespace__", None)
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit:
            raise TypeError(
                f"{cls.__qualname__}.__kannuki_namespace__ must be a non-empty str, not {explicit!r}"
            )
        return explicit
    table = getattr(cls, "__tablename__", None)
    if isinstance(table, str) and table:
        return table
    meta = getattr(cls, "_meta", None)
    db_table = getattr(meta, "db_table", None)
    if isinstance(db_table, str) and db_table:
        return db_table
    return cls.__name__.lower()


def primary_key_value(record: Any) -> Any:
    """The record's primary key (Django ``pk``, the SQLAlchemy mapper's key, else ``id``); ValueError when None."""
    cls = type(record)
    if _is_django_model(cls):
        attribute, value = cls._meta.pk.attname, record.pk
    elif _is_sqlalchemy_mapped(cls):
        attribute, value = _sqlalchemy_primary_key(record)
    else:
        attribute = "id"
        try:
            value = record.id
        except AttributeError:
            raise TypeError(
                f"{cls.__qualname__} has no primary key kannuki can find (no 'id' attribute); "
                "pass scope= to scoped_lock, or give the class an 'id'"
            ) from None
    if value is None:
        raise ValueError(
            f"{cls.__qualname__}.{attribute} is None (unsaved record?); a record lock needs a primary key value"
        )
    return value


def record_identity(value: Any) -> str | None:
    """``"namespace/pk"`` for a saved Django / SQLAlchemy record or a class with ``__kannuki_namespace__``, else None.

    ``unique()`` uses it to encode records among a call's arguments.
    """
    cls = type(value)
    if not (_is_django_model(cls) or _is_sqlalchemy_mapped(cls) or hasattr(cls, "__kannuki_namespace__")):
        return None
    return f"{namespace(cls)}/{primary_key_value(value)}"


def _is_django_model(cls: type) -> bool:
    meta = getattr(cls, "_meta", None)
    return meta is not None and hasattr(meta, "pk") and hasattr(meta, "db_table") and "django" in sys.modules


def _is_sqlalchemy_mapped(cls: type) -> bool:
    return "sqlalchemy" in sys.modules and hasattr(cls, "__mapper__")


def _sqlalchemy_primary_key(record: Any) -> tuple[str, Any]:
    from sqlalchemy import inspect

    mapper = inspect(type(record))
    columns = mapper.primary_key
    names = [mapper.get_property_by_column(column).key for column in columns]
    values = mapper.primary_key_from_instance(record)
    for name, value in zip(names, values, strict=False):
        if value is None:
            return name, None
    if len(values) == 1:
        return names[0], values[0]
    return ",".join(names), ",".join(str(value) for value in values)
