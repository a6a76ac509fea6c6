"""Shared fixtures: the core twins and the real servers on 127.0.0.1.

The server fixtures (``pg_url``, ``mysql_url``, ``redis_url``) and their URL options live in
``servers.py``, shared with ``benchmarks/conftest.py``.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kannuki
from kannuki import _pure
from servers import REQUIRE_DBS, add_server_options, mysql_url, pg_url, redis_url  # noqa: F401 (fixtures)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_server_options(parser)
    group = parser.getgroup("kannuki")
    group.addoption(
        "--no-native", action="store_true", help="run the core tests against the pure-Python twin only"
    )


# Test modules importorskip these; under KANNUKI_REQUIRE_DBS=1 a missing one must fail the run,
# not quietly skip every test that talks to a server.
SERVER_DRIVERS = ("psycopg", "psycopg_pool", "MySQLdb", "redis", "rq")


def pytest_configure(config: pytest.Config) -> None:
    # A parent that ignores SIGINT (nohup, some CI runners) would make Ctrl-C tests wait forever, and
    # children inherit SIG_IGN across exec. A Python handler here is reset to the default in every
    # child, so both this process and the ones the tests start get Python's KeyboardInterrupt.
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if REQUIRE_DBS:
        import importlib

        for driver in SERVER_DRIVERS:
            try:
                importlib.import_module(driver)
            except ImportError as exc:
                raise pytest.UsageError(
                    f"KANNUKI_REQUIRE_DBS=1 but the driver {driver} does not import: {exc}"
                ) from exc


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


@pytest.fixture
def make_lockers() -> Iterator[Callable[..., kannuki.Locker]]:
    """Builds ``kannuki.Locker(target, **options)`` on demand; closes every one after the test."""
    made: list[kannuki.Locker] = []

    def make(target: Any, **options: Any) -> kannuki.Locker:
        locker = kannuki.Locker(target, **options)
        made.append(locker)
        return locker

    yield make
    for locker in made:
        locker.close()


@pytest.fixture(autouse=True)
def _no_child_process_outlives_its_test() -> Iterator[None]:
    """A forked child that hangs (its test has failed by then) is killed: multiprocessing joins every
    live child when pytest exits, so one stuck child would keep the whole run from ending."""
    yield
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)
