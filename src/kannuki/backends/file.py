"""``file:///dir``: OS file locks in a directory, for the processes of one machine.

Each key has a lock file ``<dir>/<lock id as 16 hex digits>.lock``. Holding the
lock is holding an exclusive ``flock`` on that file; the file also carries a
one-line JSON lease record (name, token, pid, host, since, expires_at), so
other processes can see who holds it, and the key's last fencing token, so
tokens strictly increase (the counter is read and bumped under the flock).
A key's first token is the wall clock in microseconds, so tokens keep
increasing even after the lock files are deleted.

The rule for leases, and why it differs from sqlite and redis: the OS lock
is the lock. While the holder's process lives nobody else can take it, even
if its lease record says expired (the record's expiry only shows whether the
holder's renewer is alive, in ``holders`` and ``kannuki list``). When the
holder dies, even by SIGKILL, the OS frees the lock at once: no waiting for
a lease to run out. A lock is *lost* only when its lock file is removed or
replaced under the holder (someone cleaned the directory): renewal notices
that, reports the loss, and ``release()`` raises ``LockLostError``.

- URL: ``file:///absolute/dir`` (created if missing). Options: ``ttl`` (the
  lease record's period, default 30 s). Lock files are never deleted by
  kannuki (deleting a lock file races with a process about to lock it).
- Exclusive locks only (no shared mode). POSIX only: on Windows it raises
  NotSupportedError. Not for network filesystems.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from kannuki.backends._lease import DEFAULT_TTL, HOST, LocalGate, check_ttl
from kannuki.backends.base import NO_WAIT_CALLBACK, Backend, Holder, reject_unknown_options
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileBackend"]

_SUFFIX = ".lock"


def file_name(lock_id: int) -> str:
    """The lock file's name for ``lock_id``: its unsigned 64-bit value in 16 hex digits."""
    return f"{lock_id & 0xFFFFFFFFFFFFFFFF:016x}{_SUFFIX}"


def _read_record(fd: int) -> dict[str, Any]:
    data = os.pread(fd, 65536 + 4096, 0)
    try:
        record = json.loads(data) if data.strip() else {}
    except ValueError:
        return {}  # being rewritten right now, or damaged: no details
    return record if isinstance(record, dict) else {}


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


class _Held:
    __slots__ = ("fd", "path", "record")

    def __init__(self, fd: int, path: str, record: dict[str, Any]) -> None:
        self.fd, self.path, self.record = fd, path, record


class FileBackend(Backend):
    """Exclusive locks as ``flock`` on per-key files in one directory."""

    scheme = "file"
    supports_shared = False
    supports_ttl = True
    reports_loss = True

    def __init__(self, directory: str, *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.time) -> None:
        if fcntl is None:
            raise NotSupportedError("the file backend needs POSIX flock(); on Windows use sqlite:/// instead")
        self.directory = os.path.abspath(directory)
        self.ttl = check_ttl(ttl, "file")
        self._now = clock
        self._gate = LocalGate()
        self._held: dict[tuple[str, int], _Held] = {}
        self._guard = threading.Lock()
        self._made_dir = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "FileBackend":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment or not parts.path.startswith("/"):
            raise ConfigurationError(f"url {url!r}: use file:///absolute/path/to/dir")
        known = {name: options.pop(name) for name in ("ttl",) if name in options}
        reject_unknown_options("file", options)
        return cls(unquote(parts.path), **known)

    def _path(self, lock_id: int) -> str:
        return os.path.join(self.directory, file_name(lock_id))

    def _open(self, path: str) -> int:
        try:
            if not self._made_dir:
                os.makedirs(self.directory, exist_ok=True)
                self._made_dir = True
            return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise BackendError(f"cannot open the lock file {path}: {exc}") from exc

    # -- locking --------------------------------------------------------------

    def acquire(
        self,
        name: str,
        lock_id: int,
        *,
        shared: bool = False,
        timeout: float | None = None,
        ttl: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
        transaction: Any = None,
    ) -> int:
        if shared:
            raise NotSupportedError("the file backend has no shared locks; use sqlite:/// for shared locks", key=name)
        if transaction is not None:
            raise NotSupportedError("the file backend has no transaction-level locks; drop transaction=")
        lease = self.ttl if ttl is None else ttl
        return self._gate.acquire(name, False, timeout, on_wait, lambda: self._try_acquire(name, lock_id, lease))

    def _try_acquire(self, name: str, lock_id: int, ttl: float) -> int:
        path = self._path(lock_id)
        fd = self._open(path)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    return 0
                raise
            if not self._same_file(fd, path):  # removed between our open and our flock: try again
                os.close(fd)
                return 0
            now = self._now()
            last = int(_read_record(fd).get("token") or 0)
            # A new (or wiped) file starts from the microsecond clock, so tokens keep
            # increasing even when someone deletes the lock directory.
            token = last + 1 if last else time.time_ns() // 1000
            record = {
                "name": name, "token": token, "pid": os.getpid(), "host": HOST,
                "since": now, "expires_at": now + ttl, "held": True,
            }
            _write_record(fd, record)
        except OSError as exc:
            os.close(fd)  # closing drops the flock
            raise BackendError(f"file lock on {path} failed: {exc}") from exc
        except BaseException:
            os.close(fd)
            raise
        with self._guard:
            self._held[name, token] = _Held(fd, path, record)
        return token

    @staticmethod
    def _same_file(fd: int, path: str) -> bool:
        try:
            mine, there = os.fstat(fd), os.stat(path)
        except FileNotFoundError:
            return False
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def release(self, name: str, lock_id: int, token: int) -> None:
        with self._guard:
            held = self._held.pop((name, token), None)
        if held is None:
            raise LockLostError(f"the lock {name!r} (token {token}) is not held by this process", key=name)
        intact = self._same_file(held.fd, held.path)
        try:
            if intact:  # keep the token in the file: the next holder counts on from it
                _write_record(held.fd, {"name": name, "token": token, "held": False})
        except OSError as exc:
            raise BackendError(f"writing the lock file {held.path} failed: {exc}") from exc
        finally:
            os.close(held.fd)  # drops the flock
        if not intact:
            raise LockLostError(
                f"the lock {name!r} was lost while held: its lock file {held.path} was removed or replaced",
                key=name,
            )

    def renew(self, name: str, lock_id: int, token: int, ttl: float | None = None) -> bool:
        held = self._held.get((name, token))
        if held is None or not self._same_file(held.fd, held.path):
            return False
        record = dict(held.record, expires_at=self._now() + (self.ttl if ttl is None else ttl))
        try:
            _write_record(held.fd, record)
        except OSError as exc:
            raise BackendError(f"writing the lock file {held.path} failed: {exc}") from exc
        held.record = record
        return True

    # -- inspection -----------------------------------------------------------

    def _holder_of(self, path: str, lock_id: int | None) -> Holder | None:
        """The holder recorded in ``path`` if the file is locked now; None when free or missing."""
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot read the lock file {path}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise BackendError(f"cannot test the lock file {path}: {exc}") from exc
            else:
                return None  # we could lock it: nobody holds it
            record = _read_record(fd)
        finally:
            os.close(fd)
        if lock_id is None:
            lock_id = int(os.path.basename(path)[: -len(_SUFFIX)], 16)
            lock_id = lock_id - (1 << 64) if lock_id >= 1 << 63 else lock_id
        return Holder(
            name=str(record.get("name", "")),
            lock_id=lock_id,
            token=record.get("token"),
            pid=record.get("pid"),
            host=record.get("host"),
            since=record.get("since"),
            expires_at=record.get("expires_at"),
        )

    def held(self, name: str, lock_id: int) -> bool:
        return self._holder_of(self._path(lock_id), lock_id) is not None

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        holder = self._holder_of(self._path(lock_id), lock_id)
        return [holder] if holder is not None else []

    def list_held(self) -> list[Holder]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise BackendError(f"cannot list the lock directory {self.directory}: {exc}") from exc
        out = []
        for entry in names:
            if entry.endswith(_SUFFIX) and len(entry) == 16 + len(_SUFFIX):
                holder = self._holder_of(os.path.join(self.directory, entry), None)
                if holder is not None:
                    out.append(holder)
        return out

    # -- life cycle -----------------------------------------------------------

    def close(self) -> None:
        with self._guard:
            held, self._held = self._held, {}
        for item in held.values():
            try:
                os.close(item.fd)
            except OSError:
                pass

    def after_fork_in_child(self) -> None:
        # The child inherited the parent's descriptors (flock is shared by both until the
        # parent closes its copy): close the child's copies so they cannot outlive the parent's hold.
        held, self._held = self._held, {}
        self._guard = threading.Lock()
        self._gate.reset_after_fork()
        for item in held.values():
            try:
                os.close(item.fd)
            except OSError:
                pass

    def describe(self) -> str:
        return f"file://{self.directory}"
