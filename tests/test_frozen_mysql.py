"""MySQL/MariaDB on a server that stops answering: every wait ends by its timeout, a frozen release is a loss.

The tests start a PRIVATE mariadbd (mariadb-install-db into a fresh folder under /tmp, its own
port and socket), freeze it with SIGSTOP (its sockets stay open, nothing answers) and thaw it
with SIGCONT; the module's finalizer thaws and stops it, so the shared server on 3306 is never
touched. Without the MariaDB server binaries the tests skip (fail under KANNUKI_REQUIRE_DBS=1).
Bounds are liveness bounds with room for a loaded machine, not benchmarks.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import kannuki
from servers import REQUIRE_DBS
from support import wait_until

MySQLdb = pytest.importorskip("MySQLdb")

CONNECT_TIMEOUT = 2  # the lockers' connect_timeout here: also the longest silence they accept
SLACK = 2.0  # room for a loaded machine on top of each bound
SERVER_USER = "mysql"  # the OS user the server runs as when the tests run as root


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next(
            (str(Path(d) / name) for d in ("/usr/sbin", "/usr/bin") if (Path(d) / name).exists()), None
        )
        if found:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateServer:
    """One mariadbd of this module's own: started, frozen, thawed and stopped by the tests."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, base: Path) -> None:
        self.proc = proc
        self.port = port
        self.base = base
        self.url = f"mysql://root@127.0.0.1:{port}/mysql"

    @contextmanager
    def frozen(self, at_most: float = 20.0) -> Iterator[None]:
        """SIGSTOP for the duration of the block, SIGCONT after it whatever happened.

        A timer thaws the server after ``at_most`` seconds in any case: a call that would hang
        on the frozen server (in C, where pytest-timeout cannot reach) then ends, and its
        test fails on its time bound instead of hanging the run.
        """
        thaw = threading.Timer(at_most, self.proc.send_signal, (signal.SIGCONT,))
        self.proc.send_signal(signal.SIGSTOP)
        thaw.start()
        try:
            # SIGSTOP takes effect a moment later, thread by thread: wait until every one has stopped.
            assert wait_until(self._stopped, 10), "the server did not stop"
            yield
        finally:
            thaw.cancel()
            self.proc.send_signal(signal.SIGCONT)

    def _stopped(self) -> bool:
        """True when every thread of the server is in the stopped state (``T`` in /proc)."""
        states = []
        for stat in Path(f"/proc/{self.proc.pid}/task").glob("*/stat"):
            try:
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):  # a thread that just ended
                continue
        return bool(states) and all(state in ("T", "t") for state in states)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[PrivateServer]:
    """A private MariaDB server on a free port; thawed and stopped after the module."""
    mariadbd = _binary("mariadbd", "mysqld")
    install = _binary("mariadb-install-db", "mysql_install_db")
    as_root = os.geteuid() == 0
    if mariadbd is None or install is None:
        message = "the MariaDB server binaries (mariadbd, mariadb-install-db) are not installed"
        if REQUIRE_DBS:
            pytest.fail(message + " (KANNUKI_REQUIRE_DBS=1)", pytrace=False)
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="kannuki-frozen-mysql-", dir="/tmp"))
    os.chmod(base, 0o755)
    user = [f"--user={SERVER_USER}"] if as_root else []
    if as_root:
        shutil.chown(base, SERVER_USER, SERVER_USER)
    done = subprocess.run(
        [
            install,
            "--no-defaults",
            f"--datadir={base / 'data'}",
            *user,
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"mariadb-install-db failed: {done.stderr.strip() or done.stdout.strip()}")
    port = _free_port()
    proc = subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            *user,
            f"--datadir={base / 'data'}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={base / 'mysqld.sock'}",
            f"--pid-file={base / 'mysqld.pid'}",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
            f"--log-error={base / 'server.log'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    running = PrivateServer(proc, port, base)
    try:

        def accepting() -> bool:
            try:
                MySQLdb.connect(host="127.0.0.1", port=port, user="root", connect_timeout=2).close()
                return True
            except MySQLdb.OperationalError:
                return proc.poll() is not None  # died: stop waiting

        assert wait_until(accepting, 60) and proc.poll() is None, (base / "server.log").read_text()[-2000:]
        yield running
    finally:
        running.stop()


async def maybe(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


@pytest.fixture(params=["sync", "async"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(api: str, body: Callable[[type], Any]) -> None:
    cls = kannuki.Locker if api == "sync" else kannuki.AsyncLocker
    asyncio.run(body(cls))


async def close(locker: Any) -> None:
    await maybe(locker.aclose() if isinstance(locker, kannuki.AsyncLocker) else locker.close())


@pytest.mark.parametrize("connection", ["pooled", "new"])
def test_acquire_on_a_frozen_server_ends_within_its_timeout(
    api: str, connection: str, server: PrivateServer
) -> None:
    """acquire(timeout=1) on a server that stopped answering: False or BackendError within 1 s + connect_timeout."""

    async def body(cls: type) -> None:
        locker = cls(server.url, key_prefix=f"frozen-{uuid.uuid4().hex[:8]}", connect_timeout=CONNECT_TIMEOUT)
        try:
            if connection == "pooled":  # a connection in the pool, used a moment ago: no ping before reuse
                warm = locker.lock("warm")
                assert await maybe(warm.acquire(timeout=5))
                await maybe(warm.release())
            lock = locker.lock("k")
            with server.frozen():
                started = time.monotonic()
                try:
                    outcome: object = await maybe(lock.acquire(timeout=1))
                except kannuki.BackendError as exc:
                    outcome = exc
                took = time.monotonic() - started
            assert outcome is False or isinstance(outcome, kannuki.BackendError), outcome
            assert took < 1 + CONNECT_TIMEOUT + SLACK, f"acquire(timeout=1) took {took:.2f}s"
            assert not lock.locked()
            # Thawed: the store works again and nothing of the interrupted wait is left held.
            again = locker.lock("k")
            assert await maybe(again.acquire(timeout=10))
            await maybe(again.release())
        finally:
            await close(locker)

    run(api, body)


def test_release_on_a_frozen_server_raises_and_the_loss_is_reported_once(
    api: str, server: PrivateServer
) -> None:
    """release() on a frozen server raises LockLostError within the connect timeout; reported once, key freed."""

    async def body(cls: type) -> None:
        reasons: list[str] = []
        prefix = f"frozen-{uuid.uuid4().hex[:8]}"
        locker = cls(
            server.url,
            key_prefix=prefix,
            connect_timeout=CONNECT_TIMEOUT,
            on_lost=lambda lock, why: reasons.append(why),
        )
        other = cls(server.url, key_prefix=prefix, connect_timeout=CONNECT_TIMEOUT)
        try:
            lock = locker.lock("k")
            assert await maybe(lock.acquire(timeout=5))
            with server.frozen():
                started = time.monotonic()
                with pytest.raises(kannuki.LockLostError):
                    await maybe(lock.release())
                took = time.monotonic() - started
            assert took < CONNECT_TIMEOUT + SLACK, f"release() took {took:.2f}s"
            assert lock.lost and not lock.locked()
            assert len(reasons) == 1 and locker.stats().lost == 1
            with pytest.raises(kannuki.NotHeldError):
                await maybe(lock.release())
            # The connection was closed: once thawed, the server ends its session and frees the key.
            taken = other.lock("k")
            assert await maybe(taken.acquire(timeout=10))
            await maybe(taken.release())
            assert len(reasons) == 1
        finally:
            await close(other)
            await close(locker)

    run(api, body)


def test_ensure_held_on_a_frozen_server_raises_within_the_connect_timeout(
    api: str, server: PrivateServer
) -> None:
    """ensure_held() on a frozen server: LockLostError (reported once) within the connect timeout, no hang."""

    async def body(cls: type) -> None:
        locker = cls(server.url, key_prefix=f"frozen-{uuid.uuid4().hex[:8]}", connect_timeout=CONNECT_TIMEOUT)
        try:
            lock = locker.lock("k")
            assert await maybe(lock.acquire(timeout=5))
            with server.frozen():
                started = time.monotonic()
                with pytest.raises(kannuki.LockLostError):
                    await maybe(lock.ensure_held())
                took = time.monotonic() - started
            assert took < CONNECT_TIMEOUT + SLACK, f"ensure_held() took {took:.2f}s"
            assert lock.lost and locker.stats().lost == 1
        finally:
            await close(locker)

    run(api, body)


def test_a_server_frozen_for_a_while_is_not_a_loss(api: str, server: PrivateServer) -> None:
    """No false alarm: a held lock whose server stops answering for 3 s (nothing asked) is still held after."""

    async def body(cls: type) -> None:
        locker = cls(server.url, key_prefix=f"frozen-{uuid.uuid4().hex[:8]}", connect_timeout=CONNECT_TIMEOUT)
        try:
            lock = locker.lock("k")
            assert await maybe(lock.acquire(timeout=5))
            with server.frozen():
                await asyncio.sleep(3)  # the watcher looks three times meanwhile
            await asyncio.sleep(1.5)
            assert lock.locked() and locker.stats().lost == 0
            await maybe(lock.ensure_held())
            await maybe(lock.release())
        finally:
            await close(locker)

    run(api, body)
