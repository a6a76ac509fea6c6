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
replaced under the holder (someone cleaned the directory, or ``force_release``
replaced it): the hold owner's renewal (every ttl/3, the grant's ``ttl``)
notices that, and ``release()`` raises ``LockLostError``.

- URL: ``file:///absolute/dir`` (created if missing). Options: ``ttl`` (the
  lease record's period, default 30 s). Lock files are never deleted by
  kannuki (deleting a lock file races with a process about to lock it);
  ``force_release`` atomically replaces a held one with a fresh file that
  keeps the token counter.
- Exclusive locks only (no shared mode). POSIX only: on Windows it raises
  NotSupportedError. Not for network filesystems.
- Waiting polls with backoff; threads (and tasks) of one process queue
  locally first. Every flock and file read or write blocks: the sync backend
  makes it directly, the async one in a worker thread, so an event loop never
  waits on the filesystem.

The async module is the source; the sync one is generated from it by
``tools/async_to_sync.py``.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from kannuki._compat import arun_blocking, asleep, atable_acquire, atable_release
from kannuki.backends._lease import DEFAULT_TTL, HOST, LocalGate, check_ttl, poll_backoff
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, reject_unknown_options
from kannuki.backends.base_async import AsyncBackend
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["AsyncFileBackend", "file_name"]

_SUFFIX = ".lock"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BUSY_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def file_name(lock_id: int) -> str:
    """The lock file's name for ``lock_id``: its unsigned 64-bit value in 16 hex digits."""
    return f"{lock_id & 0xFFFFFFFFFFFFFFFF:016x}{_SUFFIX}"


def _read_all(fd: int) -> bytes:
    """The whole file, however long (a record of a long non-ASCII key runs to hundreds of KiB)."""
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, 1 << 16, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def _read_record(fd: int) -> dict[str, Any]:
    data = _read_all(fd)
    try:
        record = json.loads(data) if data.strip() else {}
    except ValueError:
        return {}  # being rewritten right now, or damaged: no details
    return record if isinstance(record, dict) else {}


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = _encode(record)
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _same_file(fd: int, path: str) -> bool:
    """Is ``path`` still the file open on ``fd`` (not removed, not replaced)?"""
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


class _LockFile:
    """One open lock file of this process; holding its flock is holding the lock.

    Kept in the grant (``grant.conn``). ``close`` drops the flock and is
    idempotent: the descriptor number is forgotten first, so a second close
    (an abort after an interrupted release) can never close a descriptor the
    OS has handed to someone else since.
    """

    __slots__ = ("_open", "fd", "path", "record")

    def __init__(self, fd: int, path: str, open_files: set[_LockFile]) -> None:
        self.fd = fd
        self.path = path
        self.record: dict[str, Any] = {}
        self._open = open_files
        open_files.add(self)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        self._open.discard(self)
        if fd >= 0:
            try:
                os.close(fd)  # drops the flock
            except OSError:
                pass


class AsyncFileBackend(AsyncBackend):
    """Exclusive locks as ``flock`` on per-key files in one directory."""

    scheme = "file"
    supports_shared = False
    supports_ttl = True

    def __init__(
        self, directory: str, *, ttl: float = DEFAULT_TTL, clock: Callable[[], float] = time.time
    ) -> None:
        if fcntl is None:
            raise NotSupportedError("the file backend needs POSIX flock(); on Windows use sqlite:/// instead")
        self.directory = os.path.abspath(directory)
        self.ttl = self._lease = check_ttl(ttl, "file")
        self._now = clock
        self._gate = LocalGate()
        # The lock files this backend has open, for fork() and close() only (release, renew and
        # check use the grant's own). set.add / discard are atomic under the GIL.
        self._open_files: set[_LockFile] = set()
        self._made_dir = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncFileBackend:
        parts = urlsplit(url)
        if (
            parts.netloc not in ("", "localhost")
            or parts.query
            or parts.fragment
            or not parts.path.startswith("/")
        ):
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
            return os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o666)
        except OSError as exc:
            raise BackendError(f"cannot open the lock file {path}: {exc}") from exc

    # -- blocking steps (run directly by the sync backend, in a worker thread by the async one) --

    def _try_acquire(self, name: str, lock_id: int, ttl: float, taken: list[_LockFile]) -> _LockFile | None:
        """One non-blocking flock try: the locked file with its record written, or None when held.

        The open file goes into ``taken`` before it is locked, so whoever is
        interrupted after this returns (a cancelled task, Ctrl-C) can close it.
        """
        path = self._path(lock_id)
        taken.clear()  # earlier tries of this acquire closed theirs
        held = _LockFile(self._open(path), path, self._open_files)
        taken.append(held)
        try:
            try:
                fcntl.flock(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in _BUSY_ERRNOS:
                    held.close()
                    return None
                raise
            if not _same_file(held.fd, path):  # removed between our open and our flock: try again
                held.close()
                return None
            now = self._now()
            last = int(_read_record(held.fd).get("token") or 0)
            # A new (or wiped) file starts from the microsecond clock, so tokens keep
            # increasing even when someone deletes the lock directory.
            token = last + 1 if last else time.time_ns() // 1000
            record = {
                "name": name,
                "token": token,
                "pid": os.getpid(),
                "host": HOST,
                "since": now,
                "expires_at": now + ttl,
                "held": True,
            }
            _write_record(held.fd, record)
            held.record = record
        except OSError as exc:
            held.close()  # closing drops the flock
            raise BackendError(f"file lock on {path} failed: {exc}") from exc
        except BaseException:
            held.close()
            raise
        return held

    def _release(self, held: _LockFile, name: str, token: int) -> bool:
        """Write the freed record (keeping the token) and close; False when the file was no longer ours."""
        intact = not held.closed and _same_file(held.fd, held.path)
        try:
            if intact:  # keep the token in the file: the next holder counts on from it
                _write_record(held.fd, {"name": name, "token": token, "held": False})
        except OSError as exc:
            raise BackendError(f"writing the lock file {held.path} failed: {exc}") from exc
        finally:
            held.close()  # drops the flock
        return intact

    def _renew(self, held: _LockFile, ttl: float) -> bool:
        if held.closed or not _same_file(held.fd, held.path):
            return False
        record = dict(held.record, expires_at=self._now() + ttl)
        try:
            _write_record(held.fd, record)
        except OSError as exc:
            raise BackendError(f"writing the lock file {held.path} failed: {exc}") from exc
        held.record = record
        return True

    @staticmethod
    def _check(held: _LockFile) -> bool:
        return not held.closed and _same_file(held.fd, held.path)

    def _holder_of(self, path: str, lock_id: int | None) -> Holder | None:
        """The holder recorded in ``path`` if the file is locked now; None when free or missing."""
        try:
            fd = os.open(path, os.O_RDONLY | _CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackendError(f"cannot read the lock file {path}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in _BUSY_ERRNOS:
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

    def _list_held(self) -> list[Holder]:
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

    def _force_release(self, name: str, lock_id: int) -> int:
        """Replace a held lock file by a free one that keeps its token; 1 when one was held, else 0.

        Nobody can take a flock away from its process, but the lock is the
        file at the path: after the atomic rename the holder's flock is on an
        unlinked file (its renew and release report the loss) and the next
        acquirer locks the new one, counting on from the recorded token.
        """
        path = self._path(lock_id)
        holder = self._holder_of(path, lock_id)
        if holder is None:
            return 0
        fresh: dict[str, Any] = {"name": name, "held": False}
        if isinstance(holder.token, int) and holder.token > 0:
            fresh["token"] = holder.token
        scratch = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o666)
            try:
                os.write(fd, _encode(fresh))
            finally:
                os.close(fd)
            os.replace(scratch, path)
        except OSError as exc:
            try:
                os.unlink(scratch)
            except OSError:
                pass
            raise BackendError(f"cannot replace the lock file {path}: {exc}") from exc
        return 1

    # -- locking --------------------------------------------------------------

    async def acquire(
        self,
        name: str,
        lock_id: int,
        *,
        shared: bool = False,
        timeout: float | None = None,
        ttl: float | None = None,
        on_wait: Callable[[], None] = NO_WAIT_CALLBACK,
        transaction: Any = None,
    ) -> Grant | None:
        if shared:
            raise NotSupportedError(
                "the file backend has no shared locks; use sqlite:/// for shared locks", key=name
            )
        if transaction is not None:
            raise NotSupportedError("the file backend has no transaction-level locks; drop transaction=")
        lease = self._lease if ttl is None else ttl
        taken: list[_LockFile] = []
        try:
            held = await arun_blocking(self._try_acquire, name, lock_id, lease, taken)
            if held is None and timeout != 0:
                on_wait()
                held = await self._wait(name, lock_id, lease, timeout, taken)
        except BaseException:
            for stray in taken:  # locked, but the caller will never hear of it: closing frees it
                stray.close()
            raise
        if held is None:
            return None
        return Grant(name, lock_id, False, held.record["token"], lease, conn=held)

    async def _wait(
        self, name: str, lock_id: int, ttl: float, timeout: float | None, taken: list[_LockFile]
    ) -> _LockFile | None:
        """Queue behind this process's waiters for ``name``, then poll the flock with backoff."""
        start = time.monotonic()
        gate = await atable_acquire(self._gate.table, name, False, timeout, None)
        if not gate:
            return None
        try:
            backoff = poll_backoff()
            while True:
                held = await arun_blocking(self._try_acquire, name, lock_id, ttl, taken)
                if held is not None:
                    return held
                remaining = None if timeout is None else timeout - (time.monotonic() - start)
                if remaining is not None and remaining <= 0:
                    return None
                await asleep(backoff.next_delay(remaining))
        finally:
            await atable_release(self._gate.table, name, gate)

    async def release(self, grant: Grant) -> None:
        held: _LockFile = grant.conn
        if held.closed:
            raise LockLostError(
                f"the lock {grant.name!r} (token {grant.token}) is not held: it was released or aborted",
                key=grant.name,
            )
        if not await arun_blocking(self._release, held, grant.name, grant.token):
            raise LockLostError(
                f"the lock {grant.name!r} was lost while held:"
                f" its lock file {held.path} was removed or replaced",
                key=grant.name,
            )

    async def abort(self, grant: Grant) -> None:
        # Closing the descriptor drops the flock at once; the record keeps its token for the next holder.
        held: _LockFile = grant.conn
        held.close()

    async def renew(self, grant: Grant, ttl: float | None = None) -> bool:
        lease = ttl if ttl is not None else grant.ttl if grant.ttl is not None else self._lease
        renewed: bool = await arun_blocking(self._renew, grant.conn, lease)
        return renewed

    async def check(self, grant: Grant) -> bool:
        held: bool = await arun_blocking(self._check, grant.conn)
        return held

    async def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        freed: int = await arun_blocking(self._force_release, name, lock_id)
        return freed

    # -- inspection -----------------------------------------------------------

    async def held(self, name: str, lock_id: int) -> bool:
        return await arun_blocking(self._holder_of, self._path(lock_id), lock_id) is not None

    async def holders(self, name: str, lock_id: int) -> list[Holder]:
        holder = await arun_blocking(self._holder_of, self._path(lock_id), lock_id)
        return [holder] if holder is not None else []

    async def list_held(self) -> list[Holder]:
        return await arun_blocking(self._list_held)

    # -- life cycle -----------------------------------------------------------

    async def aclose(self) -> None:
        # The owner released every hold first; whatever is still open is closed (its flock dropped).
        for held in list(self._open_files):
            held.close()

    def after_fork_in_child(self) -> None:
        # The child inherited the parent's descriptors, and an inherited descriptor shares the
        # flock with the parent's (one open file description): close the child's copies, so
        # the lock ends when the parent releases it, not when this child exits. The parent's
        # descriptors stay open.
        open_files = list(self._open_files)
        self._gate.reset_after_fork()
        for held in open_files:
            held.close()

    def describe(self) -> str:
        return f"file://{self.directory}"
