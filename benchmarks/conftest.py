"""Shared fixtures for the kannuki benchmarks, and the convention every benchmark follows.

The convention (``scripts/bench_report.py`` relies on it to build the README ratio table):

1. One parametrized test per comparison, parametrized over *contenders*. The contender is the
   only parametrization (or the first one); any other variable goes into the group name.
2. Param ids name the role, then the contender:

   - ``floor-<name>``   the floor: the raw driver or the stdlib doing the same work
     (``floor-psycopg``, ``floor-threading``, ``floor-zlib.crc32``)
   - ``kannuki-<name>`` kannuki (``kannuki-native``, ``kannuki-pure``, ``kannuki-with``)
   - ``peer-<name>``    a peer library (``peer-pals``, ``peer-tooz``, ``peer-filelock``)

3. ``benchmark.group = "<backend>: <what>"`` (e.g. ``"postgres: uncontended try-acquire+release"``),
   unique across modules; every entry of one group does the same work per round.
4. The report shows, per group, each entry's mean / the floor's mean (the fastest ``floor-`` entry
   if there are several) and / the fastest ``peer-`` entry's mean. Lower is better, so a
   throughput benchmark times a fixed amount of work per round
   (``benchmark.pedantic(run_round, rounds=R, iterations=1)``).
5. Servers: the ``pg_url``, ``mysql_url`` and ``redis_url`` fixtures below skip when the server is
   absent (fail under ``KANNUKI_REQUIRE_DBS=1``). ``key_prefix`` is a unique prefix per test for
   every key and table name; clean up what you create. A missing peer library skips only its
   entry: ``pytest.importorskip("pals")`` inside that contender's setup.
6. ``pytest benchmarks --benchmark-disable`` (CI) runs each benchmark once as a smoke test: keep
   each module to a couple of seconds that way. Never assert on timings; do assert cheap
   correctness (e.g. no lost update) after the benchmark call.

Run one module: ``PYTHONPATH=src .venv/bin/python -m pytest benchmarks/test_bench_core.py --benchmark-only``;
everything with the table: ``scripts/bench``.
"""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit

import pytest

import kannuki

REQUIRE_DBS = os.environ.get("KANNUKI_REQUIRE_DBS") == "1"

# The same defaults and variables as tests/conftest.py, which owns the --pg-url/--mysql-url/--redis-url
# options: those options are honoured when that conftest is loaded too (``pytest tests benchmarks``).
DEFAULT_URLS = {
    "--pg-url": os.environ.get("KANNUKI_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    "--mysql-url": os.environ.get("KANNUKI_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
    "--redis-url": os.environ.get("KANNUKI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
}


def pytest_report_header(config: pytest.Config) -> list[str]:
    # Numbers without the implementation next to them are meaningless.
    impl = "native (Cython)" if kannuki.NATIVE else "PURE PYTHON"
    return [f"kannuki benchmarks: core {impl}, {os.cpu_count()} CPUs"]


def _server_url(config: pytest.Config, option: str, what: str) -> str:
    url = config.getoption(option, default=None) or DEFAULT_URLS[option]
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2):
            return url
    except OSError:
        message = f"{what} is not reachable at {url}"
        if REQUIRE_DBS:
            pytest.fail(message + " and KANNUKI_REQUIRE_DBS=1", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def pg_url(pytestconfig: pytest.Config) -> str:
    """URL of the real PostgreSQL server (skip when absent, fail under KANNUKI_REQUIRE_DBS=1)."""
    return _server_url(pytestconfig, "--pg-url", "PostgreSQL")


@pytest.fixture(scope="session")
def mysql_url(pytestconfig: pytest.Config) -> str:
    """URL of the real MariaDB/MySQL server (skip when absent, fail under KANNUKI_REQUIRE_DBS=1)."""
    return _server_url(pytestconfig, "--mysql-url", "MariaDB/MySQL")


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> str:
    """URL of the real Redis server (skip when absent, fail under KANNUKI_REQUIRE_DBS=1)."""
    return _server_url(pytestconfig, "--redis-url", "Redis")


@pytest.fixture
def key_prefix() -> str:
    """A prefix unique to this benchmark, for its keys and table names (other runs share the servers)."""
    return f"bench-{uuid.uuid4().hex[:8]}"
