"""``file:///dir``: OS file locks in a directory, for the processes of one machine.

Each key has a lock file ``<dir>/<lock id as 16 hex digits>.lock``. Holding the
lock is holding a ``flock`` on that file: ``LOCK_EX`` for an exclusive lock,
``LOCK_SH`` for a shared one. The file also carries a one-line JSON lease
record, so other processes can see who holds it, and the key's last fencing
token, so tokens strictly increase. A key's first token is the wall clock in
microseconds, so tokens keep increasing even after the lock files are deleted.

The record of an exclusive holder starts with its token, so the next holder
reads a few bytes to count on: ``{"token":T,"since_us":S,"expires_us":E,"pid":P,
"host":H,"name":N}`` (times in microseconds of the wall clock). Shared holders
keep one entry per reader under ``readers``: ``{"name":N,"token":T,"held":true,
"shared":true,"readers":{"<token>":{"pid":P,"host":H,"since":S,"expires_at":E}}}``
(seconds). A release does not rewrite the record: the OS lock says whether the
key is held, the record only who holds or last held it. Records of the earlier
layout (the name first, ``since`` and ``expires_at`` in seconds, ``held``) are
still read, and their token counted on.

A process keeps the lock files of its recent keys open between holds (at most
``IDLE_FILES`` descriptors per backend, the least recently used closed first),
unlocked, so a hold costs a flock, a short read, a write and an unlock. A
descriptor is only ever used by one hold at a time; one whose file was removed
or replaced meanwhile (its link count is 0) is closed, and the key's file opened
anew.

Shared holders edit the one record together, so they do it under a short
exclusive flock on the key's mutex file ``<16 hex digits>.mutex``; an
exclusive holder needs none (no reader can hold the key beside it). The mutex
file also keeps the marks of writers waiting for the key, each with its own
short expiry (``INTENT_TTL``, refreshed at every try of the waiter): a new
reader stays out while a mark is live, so overlapping readers cannot starve
a writer, and a dead waiter's mark runs out by itself.

The rule for leases, and why it differs from sqlite and redis: the OS lock
is the lock. While the holder's process lives nobody else can take it, even
if its lease record says expired (the record's expiry only shows whether the
holder's renewer is alive, in ``holders`` and ``kannuki list``). When the
holder dies, even by SIGKILL, the OS frees the lock at once: no waiting for
a lease to run out. A lock is *lost* only when its lock file is removed or
replaced under the holder (someone cleaned the directory, or ``force_release``
replaced it): the hold owner's renewal (every ttl/3, the grant's ``ttl``)
notices that, and so does ``release()``, which then raises ``LockLostError``.

- URL: ``file:///absolute/dir`` (created if missing). Options: ``ttl`` (the
  lease record's period, default 30 s). Lock files are never deleted by
  kannuki (deleting a lock file races with a process about to lock it);
  ``force_release`` atomically replaces a held one with a fresh file that
  keeps the token counter.
- Exclusive and shared locks. POSIX only: on Windows it raises
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
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from kannuki._compat import arun_blocking, asleep, atable_acquire, atable_release
from kannuki.backends import _dirwatch
from kannuki.backends._dirwatch import UNKNOWN, DirWatch
from kannuki.backends._lease import DEFAULT_TTL, HOST, INTENT_TTL, LocalGate, check_ttl, poll_backoff
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, reject_unknown_options
from kannuki.backends.base_async import AsyncBackend
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["IDLE_FILES", "AsyncFileBackend", "file_name"]

_SUFFIX = ".lock"
_MUTEX_SUFFIX = ".mutex"
# The longest wait for a key's mutex file (held only for a read and a write of a small record).
MUTEX_WAIT = 5.0
# The most lock files one backend keeps open between holds (unlocked), least recently used closed first.
IDLE_FILES = 64
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BUSY_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_TRY_SHARED = 0 if fcntl is None else fcntl.LOCK_SH | fcntl.LOCK_NB
_TRY_EXCLUSIVE = 0 if fcntl is None else fcntl.LOCK_EX | fcntl.LOCK_NB
# An exclusive holder's record starts with its token: the next holder reads just the head to count on.
_TOKEN_HEAD = b'{"token":'
_HEAD_BYTES = 512
# The end of an exclusive record (pid, host, name) is made once per name, for this many names at most
# (and only for names up to _TAIL_NAME_MAX characters: a long one is rare and its tail big).
_TAILS = 256
_TAIL_NAME_MAX = 1024
# A record shorter than the file is padded with spaces up to this many bytes; beyond, the file is cut.
_PAD_MAX = 256


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
    return _parse_record(_read_all(fd))


def _parse_record(data: bytes) -> dict[str, Any]:
    """The record on the first line of ``data`` ({} when none or damaged)."""
    line = data.split(b"\n", 1)[0]
    try:
        record = json.loads(line) if line.strip() else {}
    except ValueError:
        return {}  # being rewritten right now, or damaged: no details
    return record if isinstance(record, dict) else {}


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _write_record(fd: int, record: dict[str, Any]) -> None:
    data = _encode(record)
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _put_record(fd: int, data: bytes, size: int) -> None:
    """Write the record line ``data`` over the one in a file of ``size`` bytes, leaving nothing of a longer one.

    A little shorter: padded with spaces before its newline (JSON allows them), so
    the file keeps its length and needs no truncating; much shorter: the file is cut.
    """
    short = size - len(data)
    if short <= 0:
        os.pwrite(fd, data, 0)
    elif short <= _PAD_MAX:
        os.pwrite(fd, data[:-1] + b" " * short + b"\n", 0)
    else:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))


def _last_record(fd: int) -> tuple[int, int]:
    """(The key's last token in the lock file open on ``fd`` (0: none), the length of its record).

    An exclusive holder's record names the token first and usually fits in the
    first ``_HEAD_BYTES``, read at once; any other record (a long name, a
    shared one, the earlier layout) is read whole.
    """
    head = os.pread(fd, _HEAD_BYTES, 0)
    if head.startswith(_TOKEN_HEAD):
        comma = head.find(b",", len(_TOKEN_HEAD))
        end = head.find(b"\n", comma)
        if comma > 0 and end > 0:
            try:
                token = int(head[len(_TOKEN_HEAD) : comma])
            except ValueError:
                token = 0
            if token > 0:
                return token, end + 1
    data = head if len(head) < _HEAD_BYTES else _read_all(fd)
    return _record_token(_parse_record(data)), len(data)


def _record_token(record: dict[str, Any]) -> int:
    """The token a parsed record names (0: none)."""
    last = record.get("token")
    return last if isinstance(last, int) and not isinstance(last, bool) and last > 0 else 0


def _next_token(last: int) -> int:
    """The token after ``last``; a new (or wiped) file (``last`` 0) starts from the microsecond clock,
    so tokens keep increasing even when someone deletes the lock directory."""
    return last + 1 if last > 0 else time.time_ns() // 1000


def _record_tail(name: str) -> bytes:
    """The end of an exclusive holder's record line: this process, this host, the key's name."""
    return b',"pid":%d,"host":%s,"name":%s}\n' % (
        os.getpid(),
        json.dumps(HOST).encode(),
        json.dumps(name).encode(),
    )


def _flock_free(fd: int, operation: int, path: str) -> bool:
    """Can ``fd`` take the flock ``operation`` (``LOCK_SH`` / ``LOCK_EX``) without waiting? (It keeps it.)"""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in _BUSY_ERRNOS:
            raise BackendError(f"cannot test the lock file {path}: {exc}") from exc
        return False
    return True


def _entry_expiry(entry: dict[str, Any]) -> float:
    expires = entry.get("expires_at")
    return float(expires) if isinstance(expires, (int, float)) else 0.0


def _seconds(record: dict[str, Any], micros: str, seconds: str) -> Any:
    """A time of a record: from its microseconds field, else (the earlier layout) its seconds field."""
    value = record.get(micros)
    if isinstance(value, int) and not isinstance(value, bool):
        return value / 1_000_000
    return record.get(seconds)


def _same_file(fd: int, path: str) -> bool:
    """Is ``path`` still the file open on ``fd`` (not removed, not replaced)?"""
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _unlock_and_close(fd: int) -> None:
    """Unlock first: a copy of the descriptor in a forked child would keep the flock past a close."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
    _close_quietly(fd)


def _intents(fd: int, now: float) -> dict[str, float]:
    """The live marks of waiting writers in a mutex file: owner -> expiry (expired ones left out)."""
    writers = _read_record(fd).get("writers")
    if not isinstance(writers, dict):
        return {}
    return {
        owner: expires
        for owner, expires in writers.items()
        if isinstance(expires, (int, float)) and expires > now
    }


def _readers(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The shared holders a lease record lists (token as text -> entry); {} for an exclusive or freed record."""
    readers = record.get("readers") if record.get("held") and record.get("shared") else None
    if not isinstance(readers, dict):
        return {}
    return {token: entry for token, entry in readers.items() if isinstance(entry, dict)}


_NO_ENTRY: dict[str, Any] = {}  # an exclusive holder's ``record`` (never changed in place)


class _LockFile:
    """One hold's descriptor on a lock file; holding its flock is holding the lock.

    Kept in the grant (``grant.conn``). The descriptor number is forgotten
    first thing when the hold ends (``park``: unlocked and kept for the key's
    next hold; ``close``: unlocked and closed), so a second end (an abort
    after an interrupted release) or a late renewal can never touch a
    descriptor that another hold uses since. ``since`` is an exclusive
    holder's start (microseconds of the wall clock), ``record`` a shared
    holder's own entry under ``readers``, ``epoch`` the directory watch's
    epoch when the file was last known to be the one at its path.
    """

    __slots__ = ("_backend", "epoch", "fd", "lock_id", "record", "shared", "since", "token")

    def __init__(self, fd: int, lock_id: int, backend: AsyncFileBackend, shared: bool) -> None:
        self.fd = fd
        self.epoch = UNKNOWN
        self.lock_id = lock_id
        self.shared = shared
        self.token = 0
        self.since = 0
        self.record: dict[str, Any] = _NO_ENTRY
        self._backend = backend
        backend._open_files.add(self)

    @property
    def closed(self) -> bool:
        return self.fd < 0

    @property
    def path(self) -> str:
        return self._backend._path(self.lock_id)

    def detach(self) -> int:
        """End this hold's claim on the descriptor: its number (-1 if already ended), now the caller's."""
        fd, self.fd = self.fd, -1
        self._backend._open_files.discard(self)
        return fd

    def park(self) -> None:
        """Unlock, and keep the descriptor open for the key's next hold (idempotent)."""
        epoch = self.epoch
        fd = self.detach()
        if fd >= 0:
            self._backend._park(self.lock_id, fd, epoch, True)

    def close(self) -> None:
        """Unlock and close the descriptor (idempotent); for a hold no renewal can see yet (or any more)."""
        fd = self.detach()
        if fd >= 0:
            _unlock_and_close(fd)

    def forget(self) -> None:
        """Close the descriptor without unlocking: in a forked child, whose copy shares the parent's flock."""
        fd = self.detach()
        if fd >= 0:
            _close_quietly(fd)


class AsyncFileBackend(AsyncBackend):
    """Exclusive and shared locks as ``flock`` on per-key files in one directory."""

    scheme = "file"
    supports_shared = True
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
        # The lock files this backend's holds have open, for fork() and close() only (release, renew
        # and check use the grant's own). set.add / discard are atomic under the GIL.
        self._open_files: set[_LockFile] = set()
        # Unlocked descriptors kept for the next hold of their key: lock_id -> (fd, the watch's epoch
        # when its file was last known to be the one at its path), the least recently used first. A
        # hold pops its key's entry, so no two holds ever share a descriptor (a flock is per open
        # file: two holds of one descriptor would not exclude each other).
        self._idle: OrderedDict[int, tuple[int, int]] = OrderedDict()
        self._watch: DirWatch | None = None  # the directory's (see _dirwatch), from the first open
        # Ends of record lines, by name (see _record_tail): made again after fork (the pid changes).
        self._tails: dict[str, bytes] = {}
        # A renewal writes the record through the hold's descriptor: it must never do so once the
        # release gave that descriptor back (another hold may have it since).
        self._writing = threading.Lock()
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

    def _park(self, lock_id: int, fd: int, epoch: int, locked: bool) -> None:
        """Keep ``fd`` (unlocked first when ``locked``) for the key's next hold; close the oldest past IDLE_FILES."""
        if locked:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                _close_quietly(fd)  # closing drops the flock
                return
        idle = self._idle
        entry = (fd, epoch)
        if idle.setdefault(lock_id, entry) is not entry:  # another hold of this key parked one first
            _close_quietly(fd)
            return
        if len(idle) > IDLE_FILES:
            try:
                _lock_id, (oldest, _epoch) = idle.popitem(last=False)
            except KeyError:  # another thread emptied it meanwhile
                return
            _close_quietly(oldest)

    def _close_idle(self) -> None:
        """Close every kept descriptor (none of them holds a flock)."""
        while True:
            try:
                _lock_id, (fd, _epoch) = self._idle.popitem()
            except KeyError:
                return
            _close_quietly(fd)

    def _exclusive_record(self, name: str, token: int, since: int, expires: int) -> bytes:
        """An exclusive holder's record line (``since`` and ``expires`` in microseconds), token first."""
        tail = self._tails.get(name)
        if tail is None:
            tail = _record_tail(name)
            if len(name) <= _TAIL_NAME_MAX:
                if len(self._tails) >= _TAILS:
                    self._tails.clear()
                self._tails[name] = tail
        return b'{"token":%d,"since_us":%d,"expires_us":%d%s' % (token, since, expires, tail)

    def _open(self, path: str) -> int:
        try:
            if not self._made_dir:
                os.makedirs(self.directory, exist_ok=True)
                self._made_dir = True
            return os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o666)
        except OSError as exc:
            raise BackendError(f"cannot open the lock file {path}: {exc}") from exc

    def _open_lock_file(self, lock_id: int) -> tuple[int, int]:
        """Open the key's lock file: (fd, the watch's epoch from before the open)."""
        path = self._path(lock_id)
        watch = self._watch
        if watch is None or watch.epoch == UNKNOWN:
            try:
                if not self._made_dir:
                    os.makedirs(self.directory, exist_ok=True)
                    self._made_dir = True
            except OSError as exc:
                raise BackendError(f"cannot open the lock file {path}: {exc}") from exc
            if watch is not None:
                _dirwatch.unwatch(watch)
            watch = self._watch = _dirwatch.watch(self.directory)
        epoch = watch.current()
        return self._open(path), epoch

    def _intact(self, fd: int, lock_id: int, known: int) -> tuple[bool, int]:
        """Is the file open on ``fd`` still the one at its path? And the watch's epoch now.

        Without a stat when the directory's watch saw no removal or rename since
        ``known`` (the epoch when it last was); with one otherwise.
        """
        watch = self._watch
        epoch = UNKNOWN if watch is None else watch.current()
        if epoch == known and epoch != UNKNOWN:
            return True, epoch
        return _same_file(fd, self._path(lock_id)), epoch

    # -- blocking steps (run directly by the sync backend, in a worker thread by the async one) --

    def _mutex_path(self, path: str) -> str:
        return path[: -len(_SUFFIX)] + _MUTEX_SUFFIX

    def _with_mutex(self, path: str, work: Callable[[int], Any]) -> Any:
        """``work(fd)`` under an exclusive flock on the key's mutex file (``fd`` is that file, for the marks).

        Held only for a few reads and writes of small files; a mutex that stays
        locked longer than ``MUTEX_WAIT`` (its holder is stopped) is a BackendError.
        """
        mutex = self._mutex_path(path)
        fd = self._open(mutex)
        try:
            deadline = time.monotonic() + MUTEX_WAIT
            delay = 0.0005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in _BUSY_ERRNOS:
                        raise BackendError(f"cannot lock the mutex file {mutex}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise BackendError(f"the mutex file {mutex} stayed locked for {MUTEX_WAIT:g}s")
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
            try:
                return work(fd)
            except OSError as exc:
                raise BackendError(f"updating the lock files of {path} failed: {exc}") from exc
        finally:
            os.close(fd)  # drops the mutex

    def _mark_intent(self, path: str, owner: str | None) -> None:
        """Mark (``owner``) or refresh a waiting writer's intent in the mutex file; ``None``: nothing to mark.

        Best effort: a mark that cannot be written (the mutex stayed locked)
        only costs the writer its priority for this try; it keeps polling.
        """
        if owner is None:
            return

        def mark(fd: int) -> None:
            writers = _intents(fd, self._now())
            writers[owner] = self._now() + INTENT_TTL
            _write_record(fd, {"writers": writers})

        try:
            self._with_mutex(path, mark)
        except BackendError:
            pass

    def _withdraw_intent(self, lock_id: int, owner: str) -> None:
        """Remove a writer's mark (it got the lock, or gave up waiting)."""
        path = self._path(lock_id)
        if not os.path.exists(self._mutex_path(path)):
            return

        def withdraw(fd: int) -> None:
            writers = _intents(fd, self._now())
            if writers.pop(owner, None) is not None or _read_all(fd):
                _write_record(fd, {"writers": writers})

        self._with_mutex(path, withdraw)

    def _try_acquire(
        self,
        name: str,
        lock_id: int,
        shared: bool,
        ttl: float,
        taken: list[_LockFile],
        intent: str | None = None,
    ) -> _LockFile | None:
        """One non-blocking flock try: the locked file with its record written, or None when held.

        The key's kept descriptor is used when there is one; one whose file was
        removed or replaced meanwhile is closed and the file opened anew. The
        hold goes into ``taken`` before it is locked, so whoever is interrupted
        after this returns (a cancelled task, Ctrl-C) can close it. ``intent``
        (a waiting writer's mark): written when the key is busy, removed once
        the lock is had.
        """
        kept = self._idle.pop(lock_id, None)
        fd, known = (-1, UNKNOWN) if kept is None else kept
        while True:
            if fd < 0:
                fd, known = self._open_lock_file(lock_id)
            held = _LockFile(fd, lock_id, self, shared)
            taken[:] = (held,)  # earlier tries of this acquire ended theirs
            try:
                try:
                    fcntl.flock(fd, _TRY_SHARED if shared else _TRY_EXCLUSIVE)
                except OSError as exc:
                    if exc.errno not in _BUSY_ERRNOS:
                        raise
                    intact, known = self._intact(fd, lock_id, known)
                    if not intact and kept is not None:  # busy, but on a file that is gone: try the new one
                        held.close()
                        fd, kept = -1, None
                        continue
                    self._park(lock_id, held.detach(), known, False)
                    self._mark_intent(self._path(lock_id), intent)
                    return None
                intact, held.epoch = self._intact(fd, lock_id, known)
                if not intact:  # removed or replaced since this descriptor opened it
                    held.close()
                    if kept is not None:
                        fd, kept = -1, None
                        continue
                    return None  # within this very try: whoever replaced it may hold the new one
                if shared:
                    if self._join_under_mutex(held, name, ttl):
                        return held
                    held.park()  # a writer is waiting: readers stay out until it had its turn
                    return None
                last, size = _last_record(fd)
                held.token = token = _next_token(last)
                held.since = since = int(self._now() * 1_000_000)
                record = self._exclusive_record(name, token, since, since + int(ttl * 1_000_000))
                if len(record) < size:
                    _put_record(fd, record, size)
                else:
                    os.pwrite(fd, record, 0)
                if intent is not None:
                    self._withdraw_intent_quietly(lock_id, intent)
            except OSError as exc:
                held.close()  # closing drops the flock
                raise BackendError(f"file lock on {self._path(lock_id)} failed: {exc}") from exc
            except BaseException:
                held.close()
                raise
            return held

    def _join_under_mutex(self, held: _LockFile, name: str, ttl: float) -> bool:
        joined: bool = self._with_mutex(
            self._path(held.lock_id), lambda mutex_fd: self._join_readers(held, name, ttl, mutex_fd)
        )
        return joined

    def _join_readers(self, held: _LockFile, name: str, ttl: float, mutex_fd: int) -> bool:
        """Under the mutex, with ``LOCK_SH`` held: add this reader to the record; False when a writer waits."""
        now = self._now()
        if _intents(mutex_fd, now):
            return False
        record = _read_record(held.fd)
        token = _next_token(_record_token(record))
        readers = {t: e for t, e in _readers(record).items() if _entry_expiry(e) > now}
        entry = {"pid": os.getpid(), "host": HOST, "since": now, "expires_at": now + ttl}
        readers[str(token)] = entry
        _write_record(
            held.fd, {"name": name, "token": token, "held": True, "shared": True, "readers": readers}
        )
        held.record = entry
        held.token = token
        return True

    def _edit_readers(self, held: _LockFile, name: str, entry: dict[str, Any] | None) -> bool:
        """Put this reader's ``entry`` in the record (None: take it out); False when the file is no longer ours."""

        def edit(_mutex_fd: int) -> bool:
            with self._writing:  # taken after the mutex: never held while waiting for it
                if held.closed or not _same_file(held.fd, held.path):
                    return False
                record = _read_record(held.fd)
                readers = _readers(record)
                last = _record_token(record)
                token = max(last, held.token)
                if entry is None:
                    readers.pop(str(held.token), None)
                else:
                    readers[str(held.token)] = entry
                fresh: dict[str, Any] = {"name": name, "token": token, "held": bool(readers)}
                if readers:
                    fresh.update(shared=True, readers=readers)
                _write_record(held.fd, fresh)
                return True

        done: bool = self._with_mutex(held.path, edit)
        return done

    def _release(self, held: _LockFile, name: str) -> bool:
        """Unlock and keep the descriptor for the key's next hold; False (and closed) when the file was no longer ours.

        An exclusive holder's record stays as it is (the token in it is where
        the next holder counts on from); a reader takes its entry out.
        """
        fd = -1
        intact = False
        epoch = held.epoch
        try:
            if held.shared and not held.closed:
                intact = self._edit_readers(held, name, None)
            with self._writing:
                if not held.shared and not held.closed:
                    intact, epoch = self._intact(held.fd, held.lock_id, epoch)
                fd = held.detach()
        except OSError as exc:
            raise BackendError(f"releasing the lock file {held.path} failed: {exc}") from exc
        finally:
            if fd < 0:
                fd = self._detach_quietly(held)
            if fd >= 0:
                if intact:
                    self._park(held.lock_id, fd, epoch, True)
                else:
                    _unlock_and_close(fd)
        return intact

    def _detach_quietly(self, held: _LockFile) -> int:
        with self._writing:
            return held.detach()

    def _renew(self, held: _LockFile, name: str, ttl: float) -> bool:
        now = self._now()
        if held.shared:
            record = dict(held.record, expires_at=now + ttl)
            if not self._edit_readers(held, name, record):
                return False
            held.record = record
            return True
        with self._writing:  # the release cannot give the descriptor away meanwhile
            if held.closed or not _same_file(held.fd, held.path):
                return False
            expires = int(now * 1_000_000) + int(ttl * 1_000_000)
            try:
                data = self._exclusive_record(name, held.token, held.since, expires)
                _put_record(held.fd, data, os.fstat(held.fd).st_size)
            except OSError as exc:
                raise BackendError(f"writing the lock file {held.path} failed: {exc}") from exc
        return True

    @staticmethod
    def _check(held: _LockFile) -> bool:
        return not held.closed and _same_file(held.fd, held.path)

    def _inspect(self, path: str, lock_id: int | None) -> tuple[list[Holder], int]:
        """The holders of the lock file ``path`` if it is locked now ([] when free or missing), and its last token.

        ``LOCK_SH`` fails only while an exclusive holder has the file; when it
        succeeds, an upgrade to ``LOCK_EX`` tells whether readers hold it. The
        OS locks decide, never the record (a reader killed by SIGKILL leaves its
        entry behind).
        """
        try:
            fd = os.open(path, os.O_RDONLY | _CLOEXEC)
        except FileNotFoundError:
            return [], 0
        except OSError as exc:
            raise BackendError(f"cannot read the lock file {path}: {exc}") from exc
        try:
            free = _flock_free(fd, fcntl.LOCK_SH, path) and _flock_free(fd, fcntl.LOCK_EX, path)
            record = _read_record(fd)
        finally:
            os.close(fd)
        last_token = _record_token(record)
        if free:
            return [], last_token
        if lock_id is None:
            lock_id = int(os.path.basename(path)[: -len(_SUFFIX)], 16)
            lock_id = lock_id - (1 << 64) if lock_id >= 1 << 63 else lock_id
        name = str(record.get("name", ""))
        readers = sorted((int(t), e) for t, e in _readers(record).items() if t.isdigit())
        if readers:
            holders = [
                Holder(
                    name=name,
                    lock_id=lock_id,
                    shared=True,
                    token=token,
                    pid=entry.get("pid"),
                    host=entry.get("host"),
                    since=_seconds(entry, "since_us", "since"),
                    expires_at=_seconds(entry, "expires_us", "expires_at"),
                )
                for token, entry in readers
            ]
            return holders, last_token
        holder = Holder(
            name=name,
            lock_id=lock_id,
            shared=bool(record.get("shared")),
            token=None if record.get("shared") else record.get("token"),
            pid=record.get("pid"),
            host=record.get("host"),
            since=_seconds(record, "since_us", "since"),
            expires_at=_seconds(record, "expires_us", "expires_at"),
        )
        return [holder], last_token

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
                out.extend(self._inspect(os.path.join(self.directory, entry), None)[0])
        return out

    def _force_release(self, name: str, lock_id: int) -> int:
        """Replace a held lock file by a free one that keeps its token; how many holders it freed.

        Nobody can take a flock away from its process, but the lock is the
        file at the path: after the atomic rename the holder's flock is on an
        unlinked file (its renew and release report the loss) and the next
        acquirer locks the new one, counting on from the recorded token.
        """
        path = self._path(lock_id)
        holders, last_token = self._inspect(path, lock_id)
        if not holders:
            return 0
        fresh: dict[str, Any] = {"token": last_token} if last_token else {}  # the token first, as ever
        fresh.update(name=name, held=False)
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
        kept = self._idle.pop(lock_id, None)  # the replaced file's: of no use any more
        if kept is not None:
            _close_quietly(kept[0])
        return len(holders)

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
        if transaction is not None:
            raise NotSupportedError("the file backend has no transaction-level locks; drop transaction=")
        lease = self._lease if ttl is None else ttl
        taken: list[_LockFile] = []
        try:
            held = await arun_blocking(
                self._try_acquire, name, lock_id, shared, lease, taken
            )  # sync: held = self._try_acquire(name, lock_id, shared, lease, taken)
            if held is None and timeout != 0:
                on_wait()
                held = await self._wait(name, lock_id, shared, lease, timeout, taken)
        except BaseException:
            for stray in taken:  # locked, but the caller will never hear of it: closing frees it
                stray.close()
            raise
        if held is None:
            return None
        return Grant(name, lock_id, shared, held.token, lease, conn=held)

    async def _wait(
        self,
        name: str,
        lock_id: int,
        shared: bool,
        ttl: float,
        timeout: float | None,
        taken: list[_LockFile],
    ) -> _LockFile | None:
        """Queue behind this process's waiters for ``name``, then poll the flock with backoff.

        A writer marks its intent at every try (see the module's docstring) and
        withdraws it when it gives up; the try that takes the lock removes it.
        """
        start = time.monotonic()
        gate = await atable_acquire(self._gate.table, name, shared, timeout, None)
        if not gate:
            return None
        intent = None if shared else os.urandom(8).hex()
        held = None
        try:
            backoff = poll_backoff()
            while True:
                held = await arun_blocking(self._try_acquire, name, lock_id, shared, ttl, taken, intent)
                if held is not None:
                    return held
                remaining = None if timeout is None else timeout - (time.monotonic() - start)
                if remaining is not None and remaining <= 0:
                    return None
                await asleep(backoff.next_delay(remaining))
        finally:
            try:
                if intent is not None and held is None:
                    await arun_blocking(self._withdraw_intent_quietly, lock_id, intent)
            finally:
                await atable_release(self._gate.table, name, gate)

    def _withdraw_intent_quietly(self, lock_id: int, owner: str) -> None:
        try:
            self._withdraw_intent(lock_id, owner)
        except Exception:  # the directory is gone or stuck: the mark runs out by itself
            pass

    async def release(self, grant: Grant) -> None:
        held: _LockFile = grant.conn
        if held.closed:
            raise LockLostError(
                f"the lock {grant.name!r} (token {grant.token}) is not held: it was released or aborted",
                key=grant.name,
            )
        if not await arun_blocking(
            self._release, held, grant.name
        ):  # sync: if not self._release(held, grant.name):
            raise LockLostError(
                f"the lock {grant.name!r} was lost while held:"
                f" its lock file {held.path} was removed or replaced",
                key=grant.name,
            )

    async def abort(self, grant: Grant) -> None:
        # Closing the descriptor drops the flock at once; the record keeps its token for the next holder.
        fd = self._detach_quietly(grant.conn)
        if fd >= 0:
            _unlock_and_close(fd)

    async def renew(self, grant: Grant, ttl: float | None = None) -> bool:
        lease = ttl if ttl is not None else grant.ttl if grant.ttl is not None else self._lease
        renewed: bool = await arun_blocking(self._renew, grant.conn, grant.name, lease)
        return renewed

    async def check(self, grant: Grant) -> bool:
        held: bool = await arun_blocking(self._check, grant.conn)
        return held

    async def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        freed: int = await arun_blocking(self._force_release, name, lock_id)
        return freed

    # -- inspection -----------------------------------------------------------

    async def held(self, name: str, lock_id: int) -> bool:
        return bool(await self.holders(name, lock_id))

    async def holders(self, name: str, lock_id: int) -> list[Holder]:
        holders, _last_token = await arun_blocking(self._inspect, self._path(lock_id), lock_id)
        return holders

    async def list_held(self) -> list[Holder]:
        return await arun_blocking(self._list_held)

    # -- life cycle -----------------------------------------------------------

    async def aclose(self) -> None:
        # The owner released every hold first; whatever is still open is closed (its flock dropped).
        for held in list(self._open_files):
            held.close()
        self._close_idle()
        watch, self._watch = self._watch, None
        if watch is not None:
            _dirwatch.unwatch(watch)

    def after_fork_in_child(self) -> None:
        # The child inherited the parent's descriptors, and an inherited descriptor shares the
        # flock with the parent's (one open file description): close the child's copies, so
        # the lock ends when the parent releases it, not when this child exits. The parent's
        # descriptors stay open.
        # The kept ones are the parent's as much: closed too. Record ends name the parent's pid.
        open_files = list(self._open_files)
        self._gate.reset_after_fork()
        self._writing = threading.Lock()  # another thread may have held it at the fork
        self._tails = {}
        self._watch = None  # the parent's (_dirwatch forgets it in the child)
        for held in open_files:
            held.forget()
        self._close_idle()

    def describe(self) -> str:
        return f"file://{self.directory}"
