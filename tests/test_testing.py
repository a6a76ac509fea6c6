"""Test mode (kannuki.testing) and the pytest plugin's ``kannuki_test_mode`` fixture."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import kannuki
from kannuki import _default as locker_module
from kannuki import testing

# Stores that do not exist: any connection attempt would fail with BackendError.
UNREACHABLE_URLS = ["postgresql://nobody@127.0.0.1:1/none", "redis://127.0.0.1:1/0"]


@pytest.fixture(autouse=True)
def test_mode_off_afterwards() -> Iterator[None]:
    """Every test here leaves test mode off, whatever happens."""
    yield
    testing.disable()


def test_enable_disable_is_enabled() -> None:
    """enable() turns test mode on (twice is fine); disable() turns it off (twice is fine)."""
    assert not testing.is_enabled()
    testing.enable()
    testing.enable()
    assert testing.is_enabled()
    testing.disable()
    testing.disable()
    assert not testing.is_enabled()


@pytest.mark.parametrize("url", UNREACHABLE_URLS)
def test_any_url_uses_the_test_table_without_connecting(url: str) -> None:
    """Lockers made before and after enable(), for servers that do not exist, lock in the test table."""
    before = kannuki.Locker(url, connect_timeout=1)
    testing.enable()
    after = kannuki.Locker(url, connect_timeout=1)
    assert before.try_lock("job", lambda: after.held("job")) is True
    with after.lock("job", timeout=0):
        assert before.held("job")
        assert before.try_lock("job", print) is False
    assert after.stats().acquired == before.stats().acquired == 1


def test_module_verbs_work_without_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no default locker configured, test mode supplies one; without test mode it is an error."""
    monkeypatch.setattr(locker_module, "_default", None)
    with pytest.raises(kannuki.ConfigurationError):
        kannuki.held("x")
    testing.enable()
    assert kannuki.with_lock("x", lambda: kannuki.held("x")) is True
    assert kannuki.try_lock("x", lambda: "ran") == "ran"
    with kannuki.lock("x"):
        assert kannuki.lock_or_raise("y", lambda: "ran") == "ran"


def test_simulated_hold_seen_by_every_locker_until_clear() -> None:
    """simulate_lock_held makes every (unprefixed) locker see the key as held by someone else until clear()."""
    testing.enable()
    lockers = [kannuki.Locker(UNREACHABLE_URLS[0]), kannuki.Locker("memory://")]
    testing.simulate_lock_held("report")
    for loc in lockers:
        assert loc.held("report")
        assert loc.try_lock("report", print) is False
        assert loc.with_lock("report", print, timeout=0.01) is False
        assert not loc.lock("report", shared=True, timeout=0).acquire()
    testing.clear()
    assert testing.is_enabled()
    assert all(loc.try_lock("report", lambda: "ran") == "ran" for loc in lockers)


def test_simulated_shared_hold_and_prefix() -> None:
    """A shared simulated hold lets shared locks in; prefix= targets lockers with that key_prefix."""
    testing.enable()
    plain, prefixed = kannuki.Locker("memory://"), kannuki.Locker("memory://", key_prefix="app")
    testing.simulate_lock_held("a", shared=True)
    testing.simulate_lock_held("b", prefix="app")
    with plain.lock("a", shared=True, timeout=0):
        pass
    assert plain.try_lock("a", print) is False
    assert prefixed.held("b") and not plain.held("b")
    with pytest.raises(RuntimeError, match="already held"):
        testing.simulate_lock_held("a")  # exclusive over a shared hold


def test_simulated_hold_is_not_the_calling_threads_own() -> None:
    """An untimed wait of the thread that simulated the hold is an ordinary wait, ended by clear().

    The simulated holder is someone else: before, the table filed it under the calling thread,
    so this wait was reported at once as the thread waiting for itself (DeadlockError).
    """
    import threading
    import time

    testing.enable()
    locker = kannuki.Locker("memory://")
    testing.simulate_lock_held("nightly")
    table = locker.backend.table
    cleared = threading.Event()

    def clear_once_waited_for() -> None:
        deadline = time.monotonic() + 10.0
        while not table.waiters("nightly") and time.monotonic() < deadline:
            time.sleep(0.005)
        testing.clear()
        cleared.set()

    helper = threading.Thread(target=clear_once_waited_for, daemon=True)
    helper.start()
    try:
        with locker.lock("nightly", timeout=None):  # waits until the helper clears the table
            assert cleared.is_set()
    finally:
        helper.join(10.0)
    assert not helper.is_alive() and not locker.held("nightly")


def test_simulate_lock_held_refuses_bad_use() -> None:
    """Outside test mode, and with a bad key or shared flag, simulate_lock_held raises naming the problem."""
    with pytest.raises(RuntimeError, match="enable"):
        testing.simulate_lock_held("x")
    testing.enable()
    with pytest.raises(ValueError, match="key"):
        testing.simulate_lock_held("")
    with pytest.raises(TypeError, match="shared"):
        testing.simulate_lock_held("x", shared="yes")  # type: ignore[arg-type]


def test_disable_returns_lockers_to_their_stores() -> None:
    """After disable() the test table's holds are gone and lockers use their own store again."""
    real = kannuki.Locker(f"memory://tm-{uuid.uuid4().hex[:8]}")
    testing.enable()
    testing.simulate_lock_held("k")
    assert real.held("k")
    testing.disable()
    assert not real.held("k")
    testing.enable()
    assert not real.held("k")  # a fresh table each time


def test_lock_taken_before_enable_releases_to_its_own_store() -> None:
    """A lock held across enable() is released into the store that granted it, not into the test table."""
    real = kannuki.Locker(f"memory://tm-{uuid.uuid4().hex[:8]}")
    lock = real.lock("across")
    lock.acquire()
    testing.enable()
    assert not real.held("across")  # the test table knows nothing of it
    lock.release()
    testing.disable()
    assert not real.held("across")
    assert real.stats().released == 1


def test_lock_taken_in_test_mode_is_lost_once_cleared() -> None:
    """clear() drops every lock of the test table: a holder's release then raises LockLostError."""
    testing.enable()
    lock = kannuki.Locker("memory://").lock("gone")
    lock.acquire()
    testing.clear()
    with pytest.raises(kannuki.LockLostError):
        lock.release()


def test_test_mode_context_manager() -> None:
    """test_mode() turns test mode on for the block and off after; nested inside, it leaves it on."""
    with testing.test_mode() as mode:
        assert mode is testing and testing.is_enabled()
        mode.simulate_lock_held("k")
        with testing.test_mode():
            pass
        assert testing.is_enabled() and kannuki.Locker("memory://").held("k")
    assert not testing.is_enabled()
    with pytest.raises(KeyError), testing.test_mode():
        raise KeyError("boom")
    assert not testing.is_enabled()


def test_decorators_and_records_use_the_test_table() -> None:
    """Decorators and record locks built on any locker see simulated holds too."""
    from kannuki.decorators import locked
    from kannuki.records import record_lock

    class Invoice:
        id = 7

    testing.enable()
    run = locked("import/{n}", on_conflict="skip", locker=kannuki.Locker(UNREACHABLE_URLS[1]))(
        lambda n: "ran"
    )
    testing.simulate_lock_held("import/1")
    testing.simulate_lock_held("invoice/7/sync")
    assert run(1) is None and run(2) == "ran"
    assert record_lock(Invoice(), "sync").held()


PLUGIN_TESTS = """
import kannuki, kannuki.testing

def test_fixture_turns_test_mode_on(kannuki_test_mode):
    assert kannuki_test_mode is kannuki.testing and kannuki.testing.is_enabled()
    kannuki_test_mode.simulate_lock_held("busy")
    locker = kannuki.Locker("postgresql://nobody@127.0.0.1:1/none")
    assert locker.try_lock("busy", print) is False
    assert kannuki.try_lock("free", lambda: "ran") == "ran"

def test_after_it_test_mode_is_off_and_cleared():
    assert not kannuki.testing.is_enabled()
    kannuki.testing.enable()
    assert not kannuki.held("busy")
    kannuki.testing.disable()
"""


def run_pytest(
    directory: Path,
    *args: str,
    python: str = sys.executable,
    pythonpath: str | None = None,
    autoload: bool = True,
) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_pytest_plugin_fixture_in_a_users_project(tmp_path: Path) -> None:
    """A user's test run loading kannuki.pytest_plugin gets kannuki_test_mode: on in the test, off after."""
    (tmp_path / "test_user.py").write_text(textwrap.dedent(PLUGIN_TESTS))
    src = str(Path(kannuki.__file__).parent.parent)
    # Entry points off: the plugin must come from -p alone (a src/*.egg-info could expose it too).
    out = run_pytest(tmp_path, "-p", "kannuki.pytest_plugin", pythonpath=src, autoload=False)
    assert "2 passed" in out


def test_pytest_plugin_loads_through_its_entry_point(tmp_path: Path) -> None:
    """Declared as the pytest11 entry point 'kannuki', the plugin loads unasked in a user's run."""
    import importlib.metadata

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "test_user.py").write_text(textwrap.dedent(PLUGIN_TESTS))
    src = str(Path(kannuki.__file__).parent.parent)
    root = Path(src).parent
    if (root / "pyproject.toml").exists() and Path(src).name == "src":
        # A source checkout: write what installing kannuki writes for pyproject's declaration.
        tomllib = pytest.importorskip("tomllib")
        declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
        site = tmp_path / "site"
        dist_info = site / "kannuki_entry_point_check-0.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: kannuki-entry-point-check\nVersion: 0\n"
        )
        lines = "".join(f"{name} = {target}\n" for name, target in declared.items())
        (dist_info / "entry_points.txt").write_text("[pytest11]\n" + lines)
        pythonpath = os.pathsep.join([str(site), src])
    else:
        # An installed kannuki (CI, a wheel): its own metadata must declare the plugin.
        declared = {
            ep.name: ep.value
            for ep in importlib.metadata.distribution("kannuki").entry_points
            if ep.group == "pytest11"
        }
        pythonpath = None
    assert declared == {"kannuki": "kannuki.pytest_plugin"}
    out = run_pytest(tmp_path / "project", pythonpath=pythonpath)
    assert "2 passed" in out
