"""The kannuki command line end to end, in subprocesses: exit codes, stderr, signals, the default store."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import kannuki
from support import subprocess_env


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose default store is a fresh per-test state dir."""
    env = subprocess_env(XDG_STATE_HOME=str(tmp_path / "state"))
    env.pop("KANNUKI_URL", None)
    return env


def kannuki_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kannuki", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def start_holding(env: dict[str, str], tmp_path: Path, key: str, *extra: str) -> subprocess.Popen[bytes]:
    """``kannuki run KEY -- <wait for a stop file>`` in the background; returns once the lock is held."""
    ready, stop = tmp_path / f"{key}.ready", tmp_path / f"{key}.stop"
    script = f"touch {ready}; while [ ! -e {stop} ]; do sleep 0.05; done"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kannuki", "run", *extra, key, "--", "sh", "-c", script], env=env
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder never got the lock"
        time.sleep(0.02)
    return proc


def finish(proc: subprocess.Popen[bytes], tmp_path: Path, key: str) -> int:
    (tmp_path / f"{key}.stop").touch()
    return proc.wait(30)


def test_run_exits_with_the_command_status(env: dict[str, str]) -> None:
    """The command's status and output pass through; the default store is created under XDG_STATE_HOME."""
    result = kannuki_cli(env, "run", "job", "--", "sh", "-c", "echo out; exit 7")
    assert (result.returncode, result.stdout) == (7, "out\n")
    assert Path(env["XDG_STATE_HOME"], "kannuki", "locks.sqlite3").exists()
    assert kannuki_cli(env, "run", "job", "--", "true").returncode == 0


def test_busy_lock_exits_75_naming_key_and_holder(env: dict[str, str], tmp_path: Path) -> None:
    """--try and --timeout exit 75 with one stderr line naming the key and the holder's pid; held says 0."""
    holder = start_holding(env, tmp_path, "nightly")
    try:
        busy = kannuki_cli(env, "run", "--try", "nightly", "--", "true")
        assert busy.returncode == 75
        (line,) = busy.stderr.splitlines()
        assert "'nightly'" in line and "not acquired at once" in line
        timed = kannuki_cli(env, "run", "--timeout", "0.3", "nightly", "--", "true")
        assert timed.returncode == 75 and "within 0.3s" in timed.stderr
        assert kannuki_cli(env, "held", "nightly").returncode == 0
        listing = kannuki_cli(env, "list")
        assert listing.returncode == 0 and "nightly" in listing.stdout and "PID" in listing.stdout
    finally:
        assert finish(holder, tmp_path, "nightly") == 0
    assert kannuki_cli(env, "held", "nightly").returncode == 1
    assert "no locks held" in kannuki_cli(env, "list").stdout


def test_busy_message_names_the_holder_pid(env: dict[str, str], tmp_path: Path) -> None:
    """The holder named in the 75 message is the kannuki process that holds the lease."""
    holder = start_holding(env, tmp_path, "k")
    try:
        busy = kannuki_cli(env, "run", "--try", "k", "--", "true")
        assert f"pid {holder.pid} " in busy.stderr
    finally:
        finish(holder, tmp_path, "k")


def test_waiting_run_gets_the_lock_after_the_holder(env: dict[str, str], tmp_path: Path) -> None:
    """A blocking run waits for the holder, then runs."""
    holder = start_holding(env, tmp_path, "q")
    waiter = subprocess.Popen(
        [sys.executable, "-m", "kannuki", "run", "--timeout", "30", "q", "--", "true"], env=env
    )
    time.sleep(0.3)
    assert waiter.poll() is None
    finish(holder, tmp_path, "q")
    assert waiter.wait(30) == 0


def test_sigterm_is_forwarded_to_the_command(env: dict[str, str], tmp_path: Path) -> None:
    """SIGTERM to kannuki reaches the command, whose trap decides the exit status; the lock is freed."""
    marker = tmp_path / "trapped"
    ready = tmp_path / "ready"
    script = f"trap 'touch {marker}; exit 9' TERM; touch {ready}; while true; do sleep 0.05; done"
    proc = subprocess.Popen([sys.executable, "-m", "kannuki", "run", "t", "--", "sh", "-c", script], env=env)
    deadline = time.monotonic() + 30
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 9
    assert marker.exists()
    assert kannuki_cli(env, "held", "t").returncode == 1


def test_command_killed_by_signal_exits_128_plus_n(env: dict[str, str]) -> None:
    """A command dying of SIGKILL gives 137."""
    assert kannuki_cli(env, "run", "k", "--", "sh", "-c", "kill -KILL $$").returncode == 128 + signal.SIGKILL


def test_id_matches_the_library(env: dict[str, str]) -> None:
    """`kannuki id` prints kannuki.lock_id, with and without a prefix."""
    assert kannuki_cli(env, "id", "invoices/42").stdout.strip() == str(kannuki.lock_id("invoices/42"))
    out = kannuki_cli(env, "id", "invoices/42", "--prefix", "billing").stdout.strip()
    assert out == str(kannuki.lock_id("invoices/42", "billing"))


def test_url_option_and_environment(env: dict[str, str], tmp_path: Path) -> None:
    """--url and KANNUKI_URL pick the store (here the file store): the default store is not touched."""
    url = f"file://{tmp_path}/dir"
    holder = start_holding(env, tmp_path, "f", "--url", url)
    try:
        assert kannuki_cli(env, "held", "--url", url, "f").returncode == 0
        assert kannuki_cli(dict(env, KANNUKI_URL=url), "held", "f").returncode == 0
        assert kannuki_cli(env, "held", "f").returncode == 1
    finally:
        finish(holder, tmp_path, "f")


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (("run", "--url", "bogus://x", "k", "--", "true"), 2, "unknown URL scheme"),
        (("run", "--url", "sqlite:///:memory:", "k", "--", "true"), 2, "memory://"),
        (("run", "k"), 2, "no COMMAND"),
        (("run", "--try", "--timeout", "1", "k", "--", "true"), 2, "not allowed"),
        (("run", "--timeout", "-1", "k", "--", "true"), 2, "seconds"),
        (("run", "--url", "sqlite:////nonexistent-dir/x.db", "k", "--", "true"), 69, "lock store failed"),
        (("run", "k", "--", "/nonexistent/command"), 127, "command not found"),
    ],
)
def test_errors_have_documented_exit_codes(
    env: dict[str, str], args: tuple[str, ...], code: int, text: str
) -> None:
    """Bad usage and URLs exit 2, a failing store 69, a missing command 127, each with a clear message."""
    result = kannuki_cli(env, *args)
    assert result.returncode == code
    assert text in result.stderr


def test_help_lists_verbs_examples_and_exit_codes(env: dict[str, str]) -> None:
    """--help names every verb, the default store, examples and the exit codes."""
    out = kannuki_cli(env, "--help").stdout
    for text in ("run", "held", "list", "id", "KANNUKI_URL", "locks.sqlite3", "Examples:", "75"):
        assert text in out
    assert "--timeout" in kannuki_cli(env, "run", "--help").stdout


def test_long_wait_on_a_terminal_says_who_holds_it(env: dict[str, str], tmp_path: Path) -> None:
    """With stderr on a terminal, a wait over a second prints what it waits for and the holder."""
    holder = start_holding(env, tmp_path, "tty")
    controller, terminal = pty.openpty()
    try:
        waiter = subprocess.Popen(
            [sys.executable, "-m", "kannuki", "run", "--timeout", "2", "tty", "--", "true"],
            env=env,
            stderr=terminal,
            stdout=subprocess.DEVNULL,
        )
        assert waiter.wait(30) == 75
        output = os.read(controller, 4096).decode()
        assert "waiting for the lock 'tty'" in output and f"pid {holder.pid}" in output
    finally:
        os.close(controller)
        os.close(terminal)
        finish(holder, tmp_path, "tty")


def test_item_26_break_asks_first_and_names_the_holder(env: dict[str, str], tmp_path: Path) -> None:
    """`kannuki break KEY` without --yes and without a terminal refuses (exit 2), naming the holder."""
    holder = start_holding(env, tmp_path, "stuck", "--ttl", "3")
    try:
        result = kannuki_cli(env, "break", "stuck")
        assert result.returncode == 2
        assert f"pid {holder.pid}" in result.stderr and "--yes" in result.stderr
        assert kannuki_cli(env, "held", "stuck").returncode == 0
    finally:
        finish(holder, tmp_path, "stuck")


def test_item_26_break_yes_frees_the_lock_and_the_holder_is_told(env: dict[str, str], tmp_path: Path) -> None:
    """`kannuki break --yes KEY` deletes the lease: the key is free and the holder reports the loss."""
    ready, stop = tmp_path / "b.ready", tmp_path / "b.stop"
    script = f"touch {ready}; while [ ! -e {stop} ]; do sleep 0.05; done"
    holder = subprocess.Popen(
        [sys.executable, "-m", "kannuki", "run", "--ttl", "0.6", "b", "--", "sh", "-c", script],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        result = kannuki_cli(env, "break", "--yes", "b")
        assert result.returncode == 0 and "1 hold freed" in result.stdout
        assert kannuki_cli(env, "held", "b").returncode == 1
        time.sleep(1.0)  # the holder's next renewal (every 0.2 s) finds the lease gone
    finally:
        stop.touch()
        _out, err = holder.communicate(timeout=30)
    assert "lost the lock 'b'" in err


def test_item_26_break_of_a_free_key_says_so(env: dict[str, str]) -> None:
    """Breaking a key nobody holds changes nothing and says it was free."""
    result = kannuki_cli(env, "break", "--yes", "nobody-holds-this")
    assert result.returncode == 0 and "was free" in result.stdout


# -- what this install has: --version and info -------------------------------------------------------


def test_version_says_native_or_pure(env: dict[str, str]) -> None:
    """``kannuki --version`` gives the version and which core is loaded."""
    result = kannuki_cli(env, "--version")
    assert result.returncode == 0
    core = "native core" if kannuki.NATIVE else "pure-Python core (`kannuki info` says why)"
    assert result.stdout.strip() == f"kannuki {kannuki.__version__}, {core}"
    pure = kannuki_cli(dict(env, KANNUKI_NO_EXTENSIONS="1"), "--version")
    assert pure.stdout.strip() == f"kannuki {kannuki.__version__}, pure-Python core (`kannuki info` says why)"


def test_info_prints_version_core_and_drivers(env: dict[str, str]) -> None:
    """``python -m kannuki info`` (what the ``kannuki`` script runs) prints the version, the core and,
    when pure, why, and each store's driver with its version, or how to install it."""
    from importlib.metadata import version

    result = kannuki_cli(env, "info")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"kannuki {kannuki.__version__} (")
    core = next(line for line in lines if line.startswith("core:"))
    if kannuki.NATIVE:
        assert "native" in core and "_native" in core
    else:
        assert f"pure Python: {kannuki._core.FALLBACK_REASON}" in core
    drivers = {line.split()[0]: line for line in lines[lines.index("drivers:") + 1 :]}
    assert set(drivers) >= {"postgresql", "mysql", "redis", "memory", "sqlite", "file"}
    for store, distribution in (("postgresql", "psycopg"), ("mysql", "mysqlclient"), ("redis", "redis")):
        try:
            assert f"{distribution} {version(distribution)}" in drivers[store]
        except ImportError:  # PackageNotFoundError: not installed here
            assert "not installed: pip install 'kannuki[" in drivers[store]
    pure = kannuki_cli(dict(env, KANNUKI_NO_EXTENSIONS="1"), "info")
    assert "core:    pure Python: KANNUKI_NO_EXTENSIONS is set" in pure.stdout


def test_info_json_is_one_object(env: dict[str, str]) -> None:
    """``kannuki info --json``: the same facts as one JSON object."""
    import json

    report = json.loads(kannuki_cli(dict(env, KANNUKI_NO_EXTENSIONS="1"), "info", "--json").stdout)
    assert report["version"] == kannuki.__version__
    assert (report["core"], report["fallback_reason"]) == ("pure", "KANNUKI_NO_EXTENSIONS is set")
    assert {driver["store"] for driver in report["drivers"]} >= {"postgresql", "mysql", "redis", "sqlite"}


# -- held says held / free; usage errors name the verb ------------------------------------------------


def test_held_prints_held_or_free_unless_quiet(env: dict[str, str], tmp_path: Path) -> None:
    """``kannuki held KEY`` prints "KEY: free" (exit 1) or "KEY: held by <holder>" (exit 0); -q only exits."""
    free = kannuki_cli(env, "held", "report")
    assert (free.returncode, free.stdout) == (1, "report: free\n")
    holder = start_holding(env, tmp_path, "report")
    try:
        held = kannuki_cli(env, "held", "report")
        assert held.returncode == 0
        assert held.stdout.startswith("report: held by ") and f"pid {holder.pid}" in held.stdout
        quiet = kannuki_cli(env, "held", "-q", "report")
        assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    finally:
        assert finish(holder, tmp_path, "report") == 0
    quiet = kannuki_cli(env, "held", "--quiet", "report")
    assert (quiet.returncode, quiet.stdout) == (1, "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("run", "--timout", "5", "k", "--", "true"),
            "unrecognized arguments: --timout (did you mean --timeout?)",
        ),
        (("list", "--jsn"), "unrecognized arguments: --jsn (did you mean --json?)"),
        (("run", "k", "--timeout", "5", "--", "true"), "--timeout after KEY: run's options go before KEY"),
        (("held", "k", "extra"), "unrecognized arguments: extra"),
    ],
)
def test_unknown_option_shows_the_verb_s_usage(
    env: dict[str, str], args: tuple[str, ...], message: str
) -> None:
    """A misspelt or misplaced option is reported by the verb's parser, with its usage (not the top-level
    one) and the closest option; exit 2, and nothing is run."""
    result = kannuki_cli(env, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"usage: kannuki {args[0]} "), result.stderr
    assert f"kannuki {args[0]}: error: {message}" in result.stderr
