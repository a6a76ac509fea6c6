"""Shared fixtures: the core twins and the real servers on 127.0.0.1.

Server fixtures skip when the server is unreachable, unless
``KANNUKI_REQUIRE_DBS=1`` (CI sets it): then a missing server fails the test.
URLs come from ``--pg-url`` / ``--mysql-url`` / ``--redis-url`` or the
``KANNUKI_TEST_*_URL`` environment variables.
"""

from __future__ import annotations

import os
import socket
from typing import Iterator
from urllib.parse import urlsplit

import pytest

import kannuki
from kannuki import _pure

REQUIRE_DBS = os.environ.get("KANNUKI_REQUIRE_DBS") == "1"

DEFAULT_URLS = {
    "pg": os.environ.get("KANNUKI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "mysql": os.environ.get("KANNUKI_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
    "redis": os.environ.get("KANNUKI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kannuki")
    group.addoption("--pg-url", default=DEFAULT_URLS["pg"], help="PostgreSQL URL for the tests")
    group.addoption("--mysql-url", default=DEFAULT_URLS["mysql"], help="MariaDB/MySQL URL for the tests")
    group.addoption("--redis-url", default=DEFAULT_URLS["redis"], help="Redis URL for the tests")
    group.addoption(
        "--no-native", action="store_true", help="run the core tests against the pure-Python twin only"
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    impl = "native (Cython)" if kannuki.NATIVE else "pure Python"
    reason = getattr(kannuki._core, "FALLBACK_REASON", None)
    line = f"kannuki core: {impl}"
    if reason:
        line += f" ({reason})"
    return [line, f"kannuki KANNUKI_REQUIRE_DBS={int(REQUIRE_DBS)}"]


def _core_params(config: pytest.Config) -> list[object]:
    params: list[object] = [pytest.param(_pure, id="pure")]
    if not config.getoption("--no-native"):
        try:
            from kannuki import _native
        except ImportError:
            _native = None
        if _native is not None:
            params.insert(0, pytest.param(_native, id="native"))
    return params


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # ``core`` runs a test once per twin: the compiled module and the pure one.
    if "core" in metafunc.fixturenames:
        metafunc.parametrize("core", _core_params(metafunc.config), scope="session")


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2):
            return True
    except OSError:
        return False


def _server_url(config: pytest.Config, option: str, what: str) -> str:
    url = config.getoption(option)
    if not _reachable(url):
        message = f"{what} is not reachable at {url}"
        if REQUIRE_DBS:
            pytest.fail(message + " and KANNUKI_REQUIRE_DBS=1", pytrace=False)
        pytest.skip(message)
    return url


@pytest.fixture(scope="session")
def pg_url(pytestconfig: pytest.Config) -> str:
    """URL of the real PostgreSQL server (skip, or fail under KANNUKI_REQUIRE_DBS=1)."""
    return _server_url(pytestconfig, "--pg-url", "PostgreSQL")


@pytest.fixture(scope="session")
def mysql_url(pytestconfig: pytest.Config) -> str:
    """URL of the real MariaDB/MySQL server."""
    return _server_url(pytestconfig, "--mysql-url", "MariaDB/MySQL")


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> str:
    """URL of the real Redis server."""
    return _server_url(pytestconfig, "--redis-url", "Redis")


@pytest.fixture
def pg_conn(pg_url: str) -> Iterator[object]:
    """A raw psycopg connection in autocommit mode, closed after the test."""
    psycopg = pytest.importorskip("psycopg")
    conn = psycopg.connect(pg_url, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def memory_locker() -> Iterator[kannuki.Locker]:
    """A fresh ``memory://`` locker, closed after the test."""
    locker = kannuki.Locker("memory://")
    try:
        yield locker
    finally:
        locker.close()
