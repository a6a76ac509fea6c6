"""SPEC §6: every bad input gets a clear exception naming the parameter, and nothing stays held."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest

import kannuki
from kannuki import ConfigurationError


@pytest.fixture
def locker() -> kannuki.Locker:
    return kannuki.Locker(f"memory://{uuid.uuid4().hex}")


def assert_nothing_held(locker: kannuki.Locker) -> None:
    assert locker.backend.table.keys() == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("key", "error", "pattern"),
    [
        ("", ValueError, "key"),
        (None, TypeError, "key"),
        (42, TypeError, "key"),
        (b"bytes", TypeError, "key"),
        (["list"], TypeError, "key"),
        ("lone \ud800 surrogate", ValueError, "key"),
        ("x" * (1024 * 1024), ValueError, "key"),
    ],
    ids=["empty", "none", "int", "bytes", "list", "surrogate", "one-mebibyte"],
)
def test_bad_keys_are_refused_everywhere(
    locker: kannuki.Locker, key: object, error: type, pattern: str
) -> None:
    """Empty, wrongly typed, unencodable and oversized keys raise, naming `key`, in every entry point."""
    for call in (
        lambda: locker.lock(key),  # type: ignore[arg-type]
        lambda: locker.with_lock(key, lambda: None),  # type: ignore[arg-type]
        lambda: locker.try_lock(key, lambda: None),  # type: ignore[arg-type]
        lambda: locker.lock_or_raise(key, lambda: None),  # type: ignore[arg-type]
        lambda: locker.held(key),  # type: ignore[arg-type]
        lambda: locker.lock_many(["ok", key]),  # type: ignore[list-item]
        lambda: kannuki.lock_id(key),  # type: ignore[arg-type]
    ):
        with pytest.raises(error, match=pattern):
            call()
    assert_nothing_held(locker)


def test_keys_up_to_the_limit_work(locker: kannuki.Locker) -> None:
    """A 1024-byte key and one at MAX_NAME_BYTES are fine; one byte more is refused."""
    for key in ("k" * 1024, "é" * 512, "x" * kannuki.MAX_NAME_BYTES):
        with locker.lock(key) as lock:
            assert lock.locked()
    with pytest.raises(ValueError, match="key"):
        locker.lock("x" * (kannuki.MAX_NAME_BYTES + 1))
    assert_nothing_held(locker)


@pytest.mark.parametrize("timeout", [-1, -0.001, math.nan, math.inf, -math.inf])
def test_bad_timeouts_are_refused(locker: kannuki.Locker, timeout: float) -> None:
    """Negative, NaN and infinite timeouts raise ValueError naming `timeout`."""
    with pytest.raises(ValueError, match="timeout"):
        locker.lock("k", timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        locker.with_lock("k", lambda: None, timeout=timeout)
    lock = locker.lock("k")
    with pytest.raises(ValueError, match="timeout"):
        lock.acquire(timeout=timeout)
    with pytest.raises(ConfigurationError, match="default_timeout"):
        kannuki.Locker("memory://", default_timeout=timeout)
    assert not lock.locked()
    assert_nothing_held(locker)


@pytest.mark.parametrize("timeout", ["5", True, object()])
def test_timeouts_of_the_wrong_type_are_refused(locker: kannuki.Locker, timeout: object) -> None:
    """A timeout that is not a number raises TypeError naming `timeout`."""
    with pytest.raises(TypeError, match="timeout"):
        locker.lock("k", timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"strategy": "sometimes"}, "strategy"),
        ({"retry_backoff": "fibonacci"}, "retry_backoff"),
        ({"retry_jitter": "lots"}, "retry_jitter"),
        ({"retry_attempts": 0}, "retry_attempts"),
        ({"retry_interval": -1}, "retry_interval"),
        ({"retry_interval": 1.0, "retry_max_interval": 0.5}, "retry_max_interval"),
        ({"circuit_failures": 0}, "circuit_failures"),
        ({"pool_size": 3}, "pool_size"),
        ({"ttl": -5}, "ttl"),
    ],
)
def test_bad_locker_options_name_the_option(options: dict[str, object], name: str) -> None:
    """Unknown names and bad values of Locker options raise ConfigurationError naming the option."""
    with pytest.raises(ConfigurationError, match=name):
        kannuki.Locker("memory://", **options)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"retry_attempts": 1.5}, "retry_attempts"),
        ({"instrumentation": "yes"}, "instrumentation"),
        ({"key_prefix": 3}, "key_prefix"),
    ],
)
def test_locker_options_of_the_wrong_type(options: dict[str, object], name: str) -> None:
    """Options of the wrong type raise TypeError naming the option."""
    with pytest.raises(TypeError, match=name):
        kannuki.Locker("memory://", **options)


def test_unknown_strategy_on_a_lock(locker: kannuki.Locker) -> None:
    """An unknown per-lock strategy raises ValueError naming `strategy`."""
    with pytest.raises(ValueError, match="strategy"):
        locker.lock("k", strategy="eventually")


@pytest.mark.parametrize(
    ("url", "pattern"),
    [
        ("gopher://host/x", "unknown URL scheme 'gopher'"),
        ("not a url", "url must look like"),
        ("memory:///some/path", "table name"),
    ],
)
def test_bad_urls(url: str, pattern: str) -> None:
    """Unknown schemes and malformed URLs raise ConfigurationError saying what is wrong."""
    with pytest.raises(ConfigurationError, match=pattern):
        kannuki.Locker(url)


def test_a_url_of_the_wrong_type() -> None:
    """A value that is neither a URL nor a supported connection is refused, naming `url`."""
    with pytest.raises(ConfigurationError, match="url"):
        kannuki.Locker(12345)


def test_shared_must_be_a_bool(locker: kannuki.Locker) -> None:
    """shared= takes a bool only."""
    with pytest.raises(TypeError, match="shared"):
        locker.lock("k", shared="yes")  # type: ignore[arg-type]


def test_bad_prefix_type() -> None:
    """A key_prefix that is not a str is refused, naming it."""
    with pytest.raises(TypeError, match="prefix"):
        kannuki.lock_id("k", prefix=b"p")  # type: ignore[arg-type]


def test_subscribe_refuses_bad_arguments() -> None:
    """subscribe() needs a callable and known event names."""
    with pytest.raises(TypeError, match="callback"):
        kannuki.subscribe("print")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="events"):
        kannuki.subscribe(print, events={"exploded"})
    with pytest.raises(TypeError, match="events"):
        kannuki.subscribe(print, events="acquired")


def test_lock_many_needs_keys(locker: kannuki.Locker) -> None:
    """lock_many refuses a lone string and an empty list."""
    with pytest.raises(TypeError, match="keys"):
        locker.lock_many("abc")
    with pytest.raises(ValueError, match="keys"):
        locker.lock_many([])


# URLs that build a locker without connecting (connections open on first use).
NO_CONNECT_URLS = {
    "memory": "memory://",
    "sqlite": "sqlite:///{tmp}/locks.db",
    "file": "file:///{tmp}/locks",
    "postgresql": "postgresql://nobody@127.0.0.1:1/none",
    "mysql": "mysql://nobody@127.0.0.1:1/none",
    "redis": "redis://127.0.0.1:1/0",
}


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("scheme", "typo", "meant"),
    [
        ("memory", "default_timout", "default_timeout"),
        ("memory", "tll", "ttl"),
        ("memory", "strategie", "strategy"),
        ("sqlite", "busy_timout", "busy_timeout"),
        ("file", "auto_renw", "auto_renew"),
        ("postgresql", "pool_sise", "pool_size"),
        ("mysql", "fencng", "fencing"),
        ("redis", "namespce", "namespace"),
    ],
)
def test_unknown_option_suggests_the_closest_name(
    scheme: str, typo: str, meant: str, asynchronous: bool, tmp_path: Path
) -> None:
    """A misspelt option names itself and the option meant: "did you mean 'default_timeout'?"."""
    if scheme in ("postgresql", "mysql", "redis"):
        pytest.importorskip({"postgresql": "psycopg", "mysql": "MySQLdb", "redis": "redis"}[scheme])
    cls = kannuki.AsyncLocker if asynchronous else kannuki.Locker
    url = NO_CONNECT_URLS[scheme].format(tmp=tmp_path)
    with pytest.raises(ConfigurationError, match=rf"unknown option '{typo}' .*; did you mean '{meant}'\?$"):
        cls(url, **{typo: 1})


def test_unknown_option_far_from_every_name_gets_no_suggestion() -> None:
    """No "did you mean" when nothing is close."""
    with pytest.raises(ConfigurationError, match=r"^unknown option 'zzz' for the memory backend$"):
        kannuki.Locker("memory://", zzz=1)


# A valid value for each option of BACKEND_OPTIONS.
OPTION_VALUES = {
    "ttl": 30,
    "busy_timeout": 5,
    "pool_size": 2,
    "connect_timeout": 5,
    "application_name": "kannuki-test",
    "allow_replica": False,
    "fencing": False,
    "fencing_table": "kannuki_fencing",
    "allow_cluster": False,
    "namespace": "kannuki",
    "socket_timeout": 5,
}


@pytest.mark.parametrize("scheme", sorted(NO_CONNECT_URLS))
def test_backend_options_table_lists_options_the_store_accepts(scheme: str, tmp_path: Path) -> None:
    """Every option the suggestions know for a store (BACKEND_OPTIONS) is one that store accepts."""
    from kannuki.backends._types import BACKEND_OPTIONS

    if scheme in ("postgresql", "mysql", "redis"):
        pytest.importorskip({"postgresql": "psycopg", "mysql": "MySQLdb", "redis": "redis"}[scheme])
    url = NO_CONNECT_URLS[scheme].format(tmp=tmp_path)
    for name in BACKEND_OPTIONS[scheme]:
        kannuki.Locker(url, **{name: OPTION_VALUES[name]}).close()
