"""Which backend class serves a URL scheme or a user's connection object: the one registry, sync and async.

Backend modules are imported on first use, so a driver is needed only by
whoever uses its scheme. Each store has a sync module (``kannuki.backends.X``,
generated) and its async source (``kannuki.backends.X_async``); the class of
the async one is the sync one's name with ``Async`` in front.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from kannuki.backends import _frameworks
from kannuki.errors import ConfigurationError

__all__ = ["CONNECTION_SCHEMES", "SCHEMES", "backend_class", "backend_for"]

# scheme -> (sync module, sync class). Aliases share one entry.
SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("kannuki.backends.memory", "MemoryBackend"),
    "postgresql": ("kannuki.backends.postgres", "PostgresBackend"),
    "postgres": ("kannuki.backends.postgres", "PostgresBackend"),
    "mysql": ("kannuki.backends.mysql", "MySQLBackend"),
    "mariadb": ("kannuki.backends.mysql", "MySQLBackend"),
    "sqlite": ("kannuki.backends.sqlite", "SQLiteBackend"),
    "file": ("kannuki.backends.file", "FileBackend"),
    "redis": ("kannuki.backends.redis", "RedisBackend"),
    "rediss": ("kannuki.backends.redis", "RedisBackend"),
    "valkey": ("kannuki.backends.redis", "RedisBackend"),
    "valkeys": ("kannuki.backends.redis", "RedisBackend"),
    "unix": ("kannuki.backends.redis", "RedisBackend"),
    "etcd": ("kannuki.backends.etcd", "EtcdBackend"),
    "etcds": ("kannuki.backends.etcd", "EtcdBackend"),
}

# Stores that can wrap a user's own connection, pool or client, asked in this order.
CONNECTION_SCHEMES = ("postgresql", "mysql", "redis")


def backend_class(scheme: str, *, asynchronous: bool = False) -> type[Any]:
    """The backend class for ``scheme`` (its async twin when ``asynchronous``); ConfigurationError when unknown."""
    try:
        module_name, class_name = SCHEMES[scheme]
    except KeyError:
        known = ", ".join(sorted(SCHEMES))
        raise ConfigurationError(f"unknown URL scheme {scheme!r} in url; known schemes: {known}") from None
    if asynchronous:
        module_name, class_name = module_name + "_async", "Async" + class_name
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigurationError(
                f"the {scheme!r} backend is not available in this version of kannuki"
            ) from None
        raise
    return getattr(module, class_name)  # type: ignore[no-any-return]


def backend_for(target: Any, *, asynchronous: bool = False, **options: Any) -> Any:
    """Build the backend for a URL string or a connection / pool / client object."""
    if isinstance(target, str):
        if "://" not in target:
            raise ConfigurationError(f"url must look like 'scheme://...', got {target!r}")
        scheme = urlsplit(target).scheme.lower()
        return backend_class(scheme, asynchronous=asynchronous).from_url(target, **options)
    if target is None:
        raise ConfigurationError("url is required: a URL string, or a connection or pool")
    if hasattr(target, "acquire") and hasattr(target, "fast_path") and hasattr(target, "scheme"):
        if options:
            raise ConfigurationError(
                f"options {sorted(options)} cannot be applied to an already built backend"
            )
        return target
    # A SQLAlchemy engine, connection or session, or a Django connection: its dialect names the store.
    store = _frameworks.store_of(target, asynchronous=asynchronous)
    if store is not None:
        return backend_class(store, asynchronous=asynchronous).from_connection(target, **options)
    for scheme in CONNECTION_SCHEMES:
        try:
            cls = backend_class(scheme, asynchronous=asynchronous)
        except ConfigurationError:
            continue
        if cls.wraps(target):
            return cls.from_connection(target, **options)
    kind = "an async connection, pool or client" if asynchronous else "a supported connection or pool"
    raise ConfigurationError(f"url must be a URL string or {kind}, not {type(target).__qualname__}")
