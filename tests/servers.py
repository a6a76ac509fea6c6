"""The real servers the tests and the benchmarks run against: URL options and fixtures.

Both ``tests/conftest.py`` and ``benchmarks/conftest.py`` call :func:`add_server_options` from
their ``pytest_addoption`` and import the fixtures, so either folder runs alone or both together.
A fixture skips when its server is unreachable, unless ``KANNUKI_REQUIRE_DBS=1`` (CI sets it):
then a missing server fails the test. URLs come from ``--pg-url`` / ``--mysql-url`` /
``--redis-url`` or the ``KANNUKI_TEST_*_URL`` environment variables. etcd is not a shared
server: ``etcd_cluster`` starts a 3-member cluster of its own on loopback (``etcd_cluster.py``),
skipped when the etcd binary is missing (failed under ``KANNUKI_REQUIRE_DBS=1``); a module uses it
with ``from servers import etcd_cluster``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

REQUIRE_DBS = os.environ.get("KANNUKI_REQUIRE_DBS") == "1"

# option -> (environment variable overriding the default URL, default URL, what the server is)
SERVER_OPTIONS = {
    "--pg-url": ("KANNUKI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test", "PostgreSQL"),
    "--mysql-url": ("KANNUKI_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test", "MariaDB/MySQL"),
    "--redis-url": ("KANNUKI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis"),
}


def add_server_options(parser: pytest.Parser) -> None:
    """Register the server URL options once, whichever conftest (or both) asks."""
    group = parser.getgroup("kannuki")
    known = {name for option in group.options for name in option.names()}
    for option, (variable, default, what) in SERVER_OPTIONS.items():
        if option not in known:
            group.addoption(
                option, default=os.environ.get(variable, default), help=f"{what} URL for the tests"
            )


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2):
            return True
    except OSError:
        return False


def server_url(config: pytest.Config, option: str) -> str:
    """``option``'s server URL; skips the test if unreachable (fails it under KANNUKI_REQUIRE_DBS=1)."""
    url = config.getoption(option)
    if not _reachable(url):
        message = f"{SERVER_OPTIONS[option][2]} is not reachable at {url}"
        if REQUIRE_DBS:
            pytest.fail(message + " and KANNUKI_REQUIRE_DBS=1", pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def pg_url(pytestconfig: pytest.Config) -> str:
    """URL of the real PostgreSQL server (skip when absent, fail under KANNUKI_REQUIRE_DBS=1)."""
    return server_url(pytestconfig, "--pg-url")


@pytest.fixture(scope="session")
def mysql_url(pytestconfig: pytest.Config) -> str:
    """URL of the real MariaDB/MySQL server (skip when absent, fail under KANNUKI_REQUIRE_DBS=1)."""
    return server_url(pytestconfig, "--mysql-url")


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> str:
    """URL of the real Redis server (skip when absent, fail under KANNUKI_REQUIRE_DBS=1)."""
    return server_url(pytestconfig, "--redis-url")


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[Any]:
    """A real 3-member etcd cluster on loopback, one per session (skip without the etcd binary,
    fail under KANNUKI_REQUIRE_DBS=1). Tests that stop or freeze members call ``heal()`` after."""
    import etcd_cluster as etcd

    try:
        cluster = etcd.shared_cluster()
    except etcd.EtcdUnavailable as exc:
        if REQUIRE_DBS:
            pytest.fail(f"{exc} and KANNUKI_REQUIRE_DBS=1", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        etcd.release_shared()
