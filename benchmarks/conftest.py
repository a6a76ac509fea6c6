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
5. Servers: the ``pg_url``, ``mysql_url`` and ``redis_url`` fixtures (from tests/servers.py) skip
   when the server is absent (fail under ``KANNUKI_REQUIRE_DBS=1``). ``key_prefix`` is a unique
   prefix per test for every key and table name; clean up what you create. A missing peer library
   skips only its entry: ``pytest.importorskip("pals")`` inside that contender's setup.
6. ``pytest benchmarks --benchmark-disable`` (CI) runs each benchmark once as a smoke test: keep
   each module to a couple of seconds that way. Never assert on timings; do assert cheap
   correctness (e.g. no lost update) after the benchmark call.

Run one module against the installed build: ``.venv/bin/python -m pytest benchmarks/test_bench_core.py
--benchmark-only``; everything with the table: ``scripts/bench`` (it refuses to measure src/ or a
pure-Python core that was meant to be native).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

import kannuki

# The server options and fixtures are the tests' own (tests/servers.py), and the benchmarks use
# a few test helpers (tests/support.py): put that folder on the path when the benchmarks run alone.
TESTS = str(Path(__file__).resolve().parent.parent / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from servers import add_server_options, mysql_url, pg_url, redis_url  # noqa: E402,F401 (fixtures)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_server_options(parser)


def _core() -> str:
    return "native (Cython)" if kannuki.NATIVE else f"PURE PYTHON ({kannuki._core.FALLBACK_REASON})"


def pytest_configure(config: pytest.Config) -> None:
    # scripts/bench sets this (to 1 unless KANNUKI_NO_EXTENSIONS is set): measuring the pure core by
    # mistake must stop the run, not produce a table.
    if os.environ.get("KANNUKI_BENCH_REQUIRE_NATIVE") == "1" and not kannuki.NATIVE:
        raise pytest.UsageError(
            f"the native core was expected and did not load: {kannuki._core.FALLBACK_REASON}"
            " (rebuild and install it, or set KANNUKI_BENCH_REQUIRE_NATIVE=0)"
        )


def pytest_report_header(config: pytest.Config) -> list[str]:
    # Numbers without the implementation next to them are meaningless.
    where = os.path.dirname(kannuki.__file__)
    return [f"kannuki benchmarks: core {_core()}, {os.cpu_count()} CPUs, kannuki from {where}"]


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, object]) -> None:
    # Saved with the results, so the report built from them says which core ran.
    machine_info["kannuki"] = {
        "version": kannuki.__version__,
        "core": _core(),
        "from": os.path.dirname(kannuki.__file__),
    }


@pytest.fixture
def key_prefix() -> str:
    """A prefix unique to this benchmark, for its keys and table names (other runs share the servers)."""
    return f"bench-{uuid.uuid4().hex[:8]}"
