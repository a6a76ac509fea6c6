"""Has any file of a directory been removed or renamed since a given moment? (Linux inotify; elsewhere: unknown.)

The file store keeps lock files open between holds, and a kept descriptor
whose file was removed or replaced meanwhile must not be trusted. Asking the
file itself (``fstat``) at every hold costs more than the lock: on Linux a
stat makes the next write to the file update its times, a journaled inode
change. So the store asks a :class:`DirWatch` instead, one inotify instance
per directory and process, polled without blocking: its epoch counts the
batches of removals and renames seen in the directory. A hold that finds the
same epoch after its flock as when its descriptor was last known good knows
that nothing in the directory was removed or renamed in between (inotify
queues the event before ``unlink`` or ``rename`` returns), and checks its
file only when the epoch moved.

Where there is no inotify (not Linux, the per-user limit of instances
reached, ctypes missing), and once a watch ends (its directory was removed,
moved or unmounted), the epoch is ``UNKNOWN`` and every hold checks its file.
"""

from __future__ import annotations

import itertools
import os
import select
import struct
import sys
import threading
from typing import Any

__all__ = ["UNKNOWN", "DirWatch", "unwatch", "watch"]

# The epoch of a watch that cannot tell: every hold checks its file.
UNKNOWN = -1

# inotify(7): what moves an entry's inode away from its name, and what ends the watch.
_IN_MOVED_FROM = 0x00000040
_IN_MOVED_TO = 0x00000080
_IN_DELETE = 0x00000200
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_UNMOUNT = 0x00002000
_IN_IGNORED = 0x00008000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_WATCHED = _IN_MOVED_FROM | _IN_MOVED_TO | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF
_ENDED = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_IGNORED
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


# Epochs come from one count, so no two watches (a dead one and its successor) ever share one.
_epochs = itertools.count(1)


def _libc() -> Any:
    """libc's inotify functions through ctypes (loaded on first use), or None where there are none."""
    global _LIBC
    if _LIBC is False:
        _LIBC = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols: libc's among them
                libc.inotify_init1.argtypes = [ctypes.c_int]
                libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
                _LIBC = libc
            except (ImportError, OSError, AttributeError):
                pass
    return _LIBC


_LIBC: Any = False  # not loaded yet


class DirWatch:
    """The removals and renames in one directory, as an epoch that moves when some happened."""

    __slots__ = ("_fd", "_lock", "_poll", "directory", "epoch", "pid", "users")

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.users = 0  # backends using it (see watch / unwatch): closed when the last one is done
        self.pid = os.getpid()
        self.epoch = next(_epochs)
        self._lock = threading.Lock()
        self._fd = -1
        self._poll: Any = None
        libc = _libc()
        if libc is None:
            self.epoch = UNKNOWN
            return
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:  # the per-user limit of inotify instances, say: check every hold instead
            self.epoch = UNKNOWN
            return
        if libc.inotify_add_watch(fd, os.fsencode(directory), _WATCHED) < 0:
            os.close(fd)
            self.epoch = UNKNOWN
            return
        try:
            self._poll = select.epoll()  # unlike select.poll, safe to poll from several threads at once
            self._poll.register(fd, select.EPOLLIN)
        except OSError:
            if self._poll is not None:
                self._poll.close()
                self._poll = None
            os.close(fd)
            self.epoch = UNKNOWN
            return
        self._fd = fd

    def current(self) -> int:
        """The epoch now, counting every removal or rename that finished before this call; UNKNOWN if unwatched."""
        if self._fd >= 0 and self._poll.poll(0):
            with self._lock:  # a second reader waits for the first one's count, then finds nothing left
                self._take_events()
        return self.epoch

    def _take_events(self) -> None:
        fd = self._fd
        if fd < 0:
            return
        seen = False
        ended = False
        while True:
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                ended = True
                break
            if not data:
                break
            seen = True
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                ended = ended or bool(mask & _ENDED)
                offset += _EVENT.size + length
        if ended:
            self.epoch = UNKNOWN
            self._close()
        elif seen and self.epoch != UNKNOWN:
            self.epoch = next(_epochs)

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._poll.close()
            try:
                os.close(fd)
            except OSError:
                pass

    def forget(self) -> None:
        """Stop watching: close the descriptors (in a forked child, its copies: reading them would take the
        parent's events)."""
        self._close()
        self.epoch = UNKNOWN


_watches: dict[str, DirWatch] = {}
_watches_lock = threading.Lock()


def watch(directory: str) -> DirWatch:
    """This process's watch of ``directory`` (an existing directory), shared; give it back with ``unwatch``.

    One inotify instance (and its epoll descriptor) per directory in use, not
    per backend: instances are a per-user resource (128 by default).
    """
    with _watches_lock:
        found = _watches.get(directory)
        if found is None or found.pid != os.getpid() or found.epoch == UNKNOWN:
            found = _watches[directory] = DirWatch(directory)
        found.users += 1
        return found


def unwatch(watched: DirWatch) -> None:
    """A backend is done with ``watched``: the last one to go closes it."""
    with _watches_lock:
        watched.users -= 1
        if watched.users > 0:
            return
        if _watches.get(watched.directory) is watched:
            del _watches[watched.directory]
    watched.forget()


def _forget_after_fork() -> None:
    global _watches_lock
    _watches_lock = threading.Lock()
    for inherited in list(_watches.values()):
        inherited.forget()
    _watches.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
