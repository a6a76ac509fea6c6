"""PostgreSQL instances of a test's own: initdb into a fresh folder under /tmp, a free port, stopped after.

For tests that must do to a server what the shared one must never suffer (a standby, a stop,
SIGSTOP). The binaries come from Debian's postgresql packages (scripts/test installs them);
when they are missing the test skips, or fails under KANNUKI_REQUIRE_DBS=1 like the other
server fixtures. As root, the servers run as the postgres user (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from servers import REQUIRE_DBS
from support import wait_until

SERVER_USER = "postgres"  # the OS user the servers run as when the tests run as root


def missing(what: str) -> None:
    """Skip (or fail, under KANNUKI_REQUIRE_DBS=1) a test that cannot start its own server."""
    message = f"{what}: this test starts its own instance and cannot"
    if REQUIRE_DBS:
        pytest.fail(message + " (KANNUKI_REQUIRE_DBS=1)", pytrace=False)
    pytest.skip(message)


def as_server_user(command: list[str]) -> list[str]:
    """``command`` run as the postgres user when the tests run as root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *command]
    return command


def server_dir(prefix: str) -> Path:
    """A fresh folder under /tmp that the server user owns (pytest's own tmp folders are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    if os.geteuid() == 0:
        shutil.chown(path, SERVER_USER, SERVER_USER)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian's layout), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if (Path(bindir) / "initdb").exists():
            return Path(bindir)
    return None


def accepting(url: str, seconds: float = 30.0) -> bool:
    """Does ``url`` accept connections within ``seconds``?"""
    psycopg = pytest.importorskip("psycopg")

    def ready() -> bool:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    return wait_until(ready, seconds)


def server_bindir() -> Path:
    """``pg_bindir()``, or skip (fail under KANNUKI_REQUIRE_DBS=1) when the server binaries are missing."""
    bindir = pg_bindir()
    if bindir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        missing("the PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) are not installed")
        raise AssertionError("unreachable")
    return bindir


def start(bindir: Path, data: Path, port: int, base: Path) -> None:
    """Start the instance in ``data`` on ``port`` (loopback only, fsync off, its socket in ``base``)."""
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c fsync=off -c unix_socket_directories={base}"
    run(
        as_server_user(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", f"{data}.log", "-o", options, "-w", "start"]
        ),
        f"starting the {data.name}",
    )


def stop(bindir: Path, data: Path) -> None:
    """Stop the instance in ``data`` at once (its data is a test's: nothing to keep)."""
    subprocess.run(
        as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
        capture_output=True,
        timeout=60,
    )


@contextlib.contextmanager
def private_postgres(prefix: str) -> Iterator[tuple[str, Path]]:
    """(URL, data folder) of a fresh primary of this test's own; stopped and removed after."""
    bindir = server_bindir()
    base = server_dir(prefix)
    data = base / "primary"
    started = False
    try:
        run(
            as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-N"]),
            "initdb",
        )
        port = free_port()
        start(bindir, data, port, base)
        started = True
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        assert accepting(url), "the private server did not come up"
        yield url, data
    finally:
        if started:
            stop(bindir, data)
        shutil.rmtree(base, ignore_errors=True)
