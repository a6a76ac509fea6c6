"""The stores behind one interface (:class:`~kannuki.backends.base.Backend`).

Backend modules are imported on first use, so a driver is needed only by
whoever uses its scheme. This registry is the only place that maps URL
schemes and connection objects to backend classes.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from kannuki.backends.base import Backend, BackendListener, Holder, LockRequest
from kannuki.errors import ConfigurationError

__all__ = ["Backend", "BackendListener", "Holder", "LockRequest", "SCHEMES", "backend_for", "backend_class"]

# scheme -> (module, class). Aliases share one entry.
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
    "unix": ("kannuki.backends.redis", "RedisBackend"),
}

# Backends that can wrap a user's own connection or pool, asked in this order.
CONNECTION_BACKENDS = ("postgresql", "mysql", "redis")


def backend_class(scheme: str) -> type[Backend]:
    """The backend class for ``scheme``; ConfigurationError when unknown or not available."""
    try:
        module_name, class_name = SCHEMES[scheme]
    except KeyError:
        known = ", ".join(sorted(SCHEMES))
        raise ConfigurationError(f"unknown URL scheme {scheme!r} in url; known schemes: {known}") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigurationError(
                f"the {scheme!r} backend is not available in this version of kannuki"
            ) from None
        raise
    return getattr(module, class_name)  # type: ignore[no-any-return]


def backend_for(target: Any, **options: Any) -> Backend:
    """Build the backend for a URL string or a connection / pool / client object."""
    if isinstance(target, Backend):
        if options:
            raise ConfigurationError(
                f"options {sorted(options)} cannot be applied to an already built backend"
            )
        return target
    if isinstance(target, str):
        if "://" not in target:
            raise ConfigurationError(f"url must look like 'scheme://...', got {target!r}")
        scheme = urlsplit(target).scheme.lower()
        return backend_class(scheme).from_url(target, **options)
    if target is None:
        raise ConfigurationError("url is required: a URL string, or a connection or pool")
    for scheme in CONNECTION_BACKENDS:
        try:
            cls = backend_class(scheme)
        except ConfigurationError:
            continue
        if cls.wraps(target):
            return cls.from_connection(target, **options)
    raise ConfigurationError(
        f"url must be a URL string or a supported connection or pool, not {type(target).__qualname__}"
    )
