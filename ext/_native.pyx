"""The compiled core: key hashing, backoff schedules and the in-process lock table.

The twin of ``kannuki._pure`` (same names, same results bit for bit); see
``kannuki._coreapi`` for the contract. Compiler directives live in setup.py.
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.object cimport PyObject, PyTypeObject
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.math cimport INFINITY, isfinite, isnan, pow
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

import os as _os
import threading as _threading
import time as _time
from collections import deque as _deque

from kannuki import events as _events
from kannuki.errors import DeadlockError as _DeadlockError

__all__ = [
    "Backoff",
    "Counters",
    "LockBase",
    "LockTable",
    "MAX_NAME_BYTES",
    "PlainPath",
    "SyncLockBase",
    "TokenSet",
    "full_name",
    "hash_text_extended",
    "lock_id",
    "name_and_id",
]

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL
    Py_ssize_t PyUnicode_GET_LENGTH(object unicode)
    bint PyUnicode_Check(object o)
    bint PyUnicode_CheckExact(object o)
    bint PyLong_Check(object o)
    bint PyFloat_Check(object o)
    bint PyBool_Check(object o)
    double PyFloat_AS_DOUBLE(object o)
    unsigned long long PyLong_AsUnsignedLongLong(object o) noexcept  # errors checked by the caller
    void* PyErr_Occurred() noexcept
    void PyErr_Clear() noexcept
    unsigned long PyThread_get_thread_ident() nogil  # threading.get_ident()

cdef extern from *:
    """
    /* This thread's number, the owner recorded for its holds and waits: unlike
       threading.get_ident() it is never reused by a later thread, so a hold left by a thread
       that ended is nobody's. Numbered on first use, with the GIL held. */
    #if defined(_MSC_VER)
    #define KANNUKI_THREAD_LOCAL __declspec(thread)
    #else
    #define KANNUKI_THREAD_LOCAL __thread
    #endif
    static KANNUKI_THREAD_LOCAL unsigned long long kannuki_serial_of_thread = 0;
    static unsigned long long kannuki_serials_given = 0;
    static unsigned long long kannuki_thread_serial(void) {
        if (kannuki_serial_of_thread == 0) kannuki_serial_of_thread = ++kannuki_serials_given;
        return kannuki_serial_of_thread;
    }
    """
    unsigned long long kannuki_thread_serial()

MAX_NAME_BYTES = 65536
cdef enum:
    _MAX_NAME = 65536
    _STACK_NAME = 512      # longer prefixed names go through a heap buffer

_BACKOFF_KINDS = ("constant", "linear", "exponential")
_JITTER_KINDS = ("none", "full", "decorrelated")


# ---------------------------------------------------------------------------------
# Hashing: PostgreSQL's hash_bytes_extended (lookup3), little-endian reads only.
# ---------------------------------------------------------------------------------

cdef inline uint32_t _rot(uint32_t x, int k) noexcept nogil:
    return (x << k) | (x >> (32 - k))


cdef inline uint32_t _le32(const unsigned char* p) noexcept nogil:
    # Assembled from bytes, never a pointer cast: the same words on big-endian hosts.
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline void _mix(uint32_t* a, uint32_t* b, uint32_t* c) noexcept nogil:
    a[0] -= c[0]; a[0] ^= _rot(c[0], 4); c[0] += b[0]
    b[0] -= a[0]; b[0] ^= _rot(a[0], 6); a[0] += c[0]
    c[0] -= b[0]; c[0] ^= _rot(b[0], 8); b[0] += a[0]
    a[0] -= c[0]; a[0] ^= _rot(c[0], 16); c[0] += b[0]
    b[0] -= a[0]; b[0] ^= _rot(a[0], 19); a[0] += c[0]
    c[0] -= b[0]; c[0] ^= _rot(b[0], 4); b[0] += a[0]


cdef inline void _final(uint32_t* a, uint32_t* b, uint32_t* c) noexcept nogil:
    c[0] ^= b[0]; c[0] -= _rot(b[0], 14)
    a[0] ^= c[0]; a[0] -= _rot(c[0], 11)
    b[0] ^= a[0]; b[0] -= _rot(a[0], 25)
    c[0] ^= b[0]; c[0] -= _rot(b[0], 16)
    a[0] ^= c[0]; a[0] -= _rot(c[0], 4)
    b[0] ^= a[0]; b[0] -= _rot(a[0], 14)
    c[0] ^= b[0]; c[0] -= _rot(b[0], 24)


cdef uint64_t _hash_bytes(const unsigned char* k, Py_ssize_t keylen, uint64_t seed) noexcept nogil:
    """hash_bytes_extended from PostgreSQL's src/common/hashfn.c."""
    cdef uint32_t a, b, c
    cdef Py_ssize_t n = keylen
    a = b = c = <uint32_t>0x9e3779b9 + <uint32_t>keylen + <uint32_t>3923095
    if seed != 0:
        # The seed is mixed in as if it were a first 12-byte chunk of data.
        a += <uint32_t>(seed >> 32)
        b += <uint32_t>seed
        _mix(&a, &b, &c)
    while n >= 12:
        a += _le32(k)
        b += _le32(k + 4)
        c += _le32(k + 8)
        _mix(&a, &b, &c)
        k += 12
        n -= 12
    # The last 0..11 bytes; the low byte of c is reserved for the length.
    if n >= 11: c += <uint32_t>k[10] << 24
    if n >= 10: c += <uint32_t>k[9] << 16
    if n >= 9: c += <uint32_t>k[8] << 8
    if n >= 8: b += <uint32_t>k[7] << 24
    if n >= 7: b += <uint32_t>k[6] << 16
    if n >= 6: b += <uint32_t>k[5] << 8
    if n >= 5: b += k[4]
    if n >= 4: a += <uint32_t>k[3] << 24
    if n >= 3: a += <uint32_t>k[2] << 16
    if n >= 2: a += <uint32_t>k[1] << 8
    if n >= 1: a += k[0]
    _final(&a, &b, &c)
    return (<uint64_t>b << 32) | c


def hash_text_extended(data, seed=0):
    """PostgreSQL's ``hashtextextended`` over ``data`` with ``seed``, as a signed 64-bit int.

    ``seed`` is taken modulo 2**64 (a negative bigint seed in SQL is the same
    bits). Raises TypeError when ``data`` is not bytes-like or ``seed`` not an int.
    """
    cdef const unsigned char[::1] view
    cdef uint64_t h, s
    if PyUnicode_Check(data):
        raise TypeError("data must be bytes, not str; encode it to UTF-8 first")
    if not PyLong_Check(seed):
        raise TypeError(f"seed must be an int, not {type(seed).__name__}")
    if not -(1 << 63) <= seed < (1 << 64):
        raise ValueError(f"seed must fit in 64 bits, got {seed}")
    s = <uint64_t>(seed & 0xFFFFFFFFFFFFFFFF)
    if isinstance(data, bytes):
        return <int64_t>_hash_bytes(<const unsigned char*><char*>data, len(<bytes>data), s)
    mv = memoryview(data)
    if not mv.c_contiguous:  # a strided view: hash its bytes in order, as the pure twin does
        data = mv.tobytes()
        return <int64_t>_hash_bytes(<const unsigned char*><char*>data, len(<bytes>data), s)
    view = mv.cast("B")
    if view.shape[0] == 0:
        return <int64_t>_hash_bytes(<const unsigned char*>b"", 0, s)
    with nogil:
        h = _hash_bytes(&view[0], view.shape[0], s)
    return <int64_t>h


cdef inline const char* _utf8(object text, Py_ssize_t* size, str name) except NULL:
    try:
        return PyUnicode_AsUTF8AndSize(text, size)
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not encodable as UTF-8 (it contains a lone surrogate)") from None


cdef inline str _exact(object text):
    """The exact ``str`` of a str or str subclass (``class Job(str, Enum)``): its string value."""
    return text if PyUnicode_CheckExact(text) else str.__str__(text)


cdef inline int _check_key(object key, object prefix) except -1:
    if not PyUnicode_Check(key):
        raise TypeError(f"key must be a str, not {type(key).__name__}")
    if PyUnicode_GET_LENGTH(key) == 0:
        raise ValueError("key must not be empty")
    if prefix is not None and not PyUnicode_Check(prefix):
        raise TypeError(f"prefix must be a str or None, not {type(prefix).__name__}")
    return 0


cdef inline int _too_long(Py_ssize_t size) except -1:
    raise ValueError(
        f"key is too long: the full lock name is {size} bytes of UTF-8, "
        f"the limit is {_MAX_NAME} bytes"
    )


cdef int64_t _name_hash(object key, object prefix) except? -1:
    """Validate, then hash the UTF-8 full name straight from CPython's cached buffers."""
    cdef Py_ssize_t kn, pn, total
    cdef const char* kp
    cdef const char* pp
    cdef char stack[_STACK_NAME]
    cdef char* buf
    cdef uint64_t h
    _check_key(key, prefix)
    kp = _utf8(key, &kn, "key")
    if prefix is None or PyUnicode_GET_LENGTH(prefix) == 0:
        if kn > _MAX_NAME:
            _too_long(kn)
        return <int64_t>_hash_bytes(<const unsigned char*>kp, kn, 0)
    pp = _utf8(prefix, &pn, "prefix")
    total = pn + 1 + kn
    if total > _MAX_NAME:
        _too_long(total)
    # lookup3 reads 12-byte blocks across the pieces: join them in a scratch buffer.
    if total <= _STACK_NAME:
        buf = &stack[0]
    else:
        buf = <char*>PyMem_Malloc(total)
        if buf == NULL:
            raise MemoryError()
    memcpy(buf, pp, pn)
    buf[pn] = b':'
    memcpy(buf + pn + 1, kp, kn)
    h = _hash_bytes(<const unsigned char*>buf, total, 0)
    if buf != &stack[0]:
        PyMem_Free(buf)
    return <int64_t>h


def lock_id(key, prefix=None):
    """The signed 64-bit lock ID of ``key``: ``hashtextextended(full_name, 0)``."""
    return _name_hash(key, prefix)


def full_name(key, prefix=None):
    """Validate ``key`` / ``prefix`` and return ``f"{prefix}:{key}"`` (``key`` with no prefix).

    Raises TypeError when ``key`` is not a str (or ``prefix`` not a str or None)
    and ValueError when ``key`` is empty, not UTF-8 encodable, or the full name
    is over MAX_NAME_BYTES of UTF-8.
    """
    _name_hash(key, prefix)
    key = _exact(key)
    return f"{_exact(prefix)}:{key}" if prefix else key


def name_and_id(key, prefix=None):
    """``(full_name(key, prefix), lock_id(key, prefix))``, validating once."""
    cdef int64_t h = _name_hash(key, prefix)
    key = _exact(key)
    return (f"{_exact(prefix)}:{key}" if prefix else key), h


# ---------------------------------------------------------------------------------
# Backoff
# ---------------------------------------------------------------------------------

cdef double _check_seconds(str name, object value) except -1.0:
    cdef double number
    if PyBool_Check(value) or not (PyLong_Check(value) or PyFloat_Check(value)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    try:
        number = value
    except OverflowError:  # an int too large for a double
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}") from None
    if not isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return number


@cython.final
cdef class Backoff:
    """A delay schedule for retries: ``next_delay()`` gives the wait before each attempt.

    ``kind`` is "constant" (``interval``), "linear" (``interval * (n + 1)``) or
    "exponential" (``interval * 2**n``), n being the attempt from 0, never above
    ``cap``. ``jitter`` "none" keeps that value, "full" draws uniformly in
    ``[0, value)``, "decorrelated" draws ``min(cap, uniform(interval, 3 * prev))``
    (AWS style; ``kind`` is then ignored). ``seed`` makes the draws repeatable.
    """

    cdef readonly str kind
    cdef readonly str jitter
    cdef readonly double interval
    cdef readonly double cap
    cdef public long long attempt
    cdef uint64_t _state
    cdef double _prev
    cdef int _kind      # index in _BACKOFF_KINDS
    cdef int _jitter    # index in _JITTER_KINDS

    def __init__(self, kind="exponential", interval=0.05, cap=2.0, jitter="full", seed=None):
        if kind not in _BACKOFF_KINDS:
            raise ValueError(f"kind must be one of {', '.join(_BACKOFF_KINDS)}; got {kind!r}")
        if jitter not in _JITTER_KINDS:
            raise ValueError(f"jitter must be one of {', '.join(_JITTER_KINDS)}; got {jitter!r}")
        cdef double interval_s = _check_seconds("interval", interval)
        cdef double cap_s = _check_seconds("cap", cap)
        if cap_s < interval_s:
            raise ValueError(f"cap ({cap!r}) must not be below interval ({interval!r})")
        if seed is None:
            state = int.from_bytes(_os.urandom(8), "little")
        elif PyBool_Check(seed) or not PyLong_Check(seed):
            raise TypeError(f"seed must be an int or None, not {type(seed).__name__}")
        else:
            state = seed & 0xFFFFFFFFFFFFFFFF
        self.kind = _BACKOFF_KINDS[_BACKOFF_KINDS.index(kind)]
        self.jitter = _JITTER_KINDS[_JITTER_KINDS.index(jitter)]
        self._kind = _BACKOFF_KINDS.index(kind)
        self._jitter = _JITTER_KINDS.index(jitter)
        self.interval = interval_s
        self.cap = cap_s
        self.attempt = 0
        self._state = state
        self._prev = interval_s

    def __repr__(self):
        return (
            f"Backoff(kind={self.kind!r}, interval={self.interval!r}, cap={self.cap!r}, "
            f"jitter={self.jitter!r}, attempt={self.attempt})"
        )

    cdef inline double _uniform(self) noexcept:
        # splitmix64, then the top 53 bits as a float in [0, 1).
        cdef uint64_t z
        self._state += <uint64_t>0x9E3779B97F4A7C15
        z = self._state
        z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
        z ^= z >> 31
        return <double>(z >> 11) * (1.0 / 9007199254740992.0)

    cdef inline double _base(self, long long n) noexcept:
        cdef double value
        if self._kind == 0:
            value = self.interval
        elif self._kind == 1:
            value = self.interval * <double>(n + 1)
        elif n >= 1024:
            value = self.cap if self.interval > 0.0 else 0.0
        else:
            value = self.interval * pow(2.0, <double>n)
        return value if value < self.cap else self.cap

    def next_delay(self, remaining=None):
        """The delay before the next attempt, never above ``cap`` nor ``remaining``; counts the attempt."""
        cdef double delay, limit = INFINITY, low
        if remaining is not None:
            if PyBool_Check(remaining) or not (PyLong_Check(remaining) or PyFloat_Check(remaining)):
                raise TypeError(
                    f"remaining must be a number of seconds or None, not {type(remaining).__name__}"
                )
            limit = remaining
            if isnan(limit) or limit < 0:
                raise ValueError(f"remaining must be a number of seconds >= 0, got {remaining!r}")
        if self._jitter == 2:
            low = self.interval
            delay = low + (self._prev * 3.0 - low) * self._uniform()
            if not delay < self.cap:
                delay = self.cap
            self._prev = delay
        elif self._jitter == 1:
            delay = self._base(self.attempt) * self._uniform()
        else:
            delay = self._base(self.attempt)
        self.attempt += 1
        if delay > limit:
            delay = limit
        return delay

    def reset(self):
        """Start the schedule over (attempt 0); the random stream goes on."""
        self.attempt = 0
        self._prev = self.interval


# ---------------------------------------------------------------------------------
# The lock table
# ---------------------------------------------------------------------------------

cdef double _check_wait(str name, object value, bint positive) except -1.0:
    """Seconds from ``value`` (None: forever), validated; ``positive`` refuses 0."""
    cdef double number
    if value is None:
        return INFINITY
    if PyFloat_Check(value):
        number = PyFloat_AS_DOUBLE(value)
    elif PyLong_Check(value) and not PyBool_Check(value):
        number = value
    else:
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if isnan(number) or number < 0 or (positive and number == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a number of seconds {bound} or None, got {value!r}")
    return number


@cython.final
@cython.freelist(8)
cdef class _Waiter:
    cdef bint shared
    cdef double ttl
    cdef uint64_t token
    cdef bint signaled
    cdef bint gone              # left the queue without a grant (timeout, interrupt, deadlock)
    cdef unsigned long long thread  # the waiting thread's serial (kannuki_thread_serial)
    cdef unsigned long ident        # its threading.get_ident(), for messages
    cdef object lock

    cdef inline void signal(self):
        if not self.signaled:
            self.signaled = True
            self.lock.release()


@cython.final
@cython.freelist(32)
cdef class _Entry:
    """One key. Holders are stored compactly: the first one in ``tok1`` / ``exp1`` /
    ``own1``, the others (all shared) in ``more`` (token -> expires_at) and
    ``more_own`` (token -> owner thread). An exclusive holder is always alone,
    so one ``exclusive`` flag gives every holder's mode.
    """
    cdef uint64_t tok1          # 0: the compact slot is empty
    cdef double exp1
    cdef unsigned long long own1  # the thread (serial) that acquired tok1
    cdef dict more              # None until a second holder comes
    cdef dict more_own
    cdef Py_ssize_t count
    cdef Py_ssize_t nttl        # holders with a TTL: skip expiry scans when 0
    cdef bint exclusive
    cdef object waiters         # deque of _Waiter, None until someone waits

    cdef inline bint grantable(self, bint shared) noexcept:
        return (not self.exclusive) if shared else self.count == 0

    cdef inline bint has_waiters(self) noexcept:
        return self.waiters is not None and len(self.waiters) > 0

    cdef inline bint idle(self) noexcept:
        return self.count == 0 and not self.has_waiters()

    cdef bint has(self, uint64_t token) except -1:
        if token == self.tok1:
            return token != 0
        return self.more is not None and token in self.more

    cdef double expires(self, uint64_t token):
        return self.exp1 if token == self.tok1 else self.more[token]

    cdef int put(self, uint64_t token, bint shared, double expires, unsigned long long owner) except -1:
        if self.tok1 == 0:
            self.tok1 = token
            self.exp1 = expires
            self.own1 = owner
        else:
            if self.more is None:
                self.more = {}
                self.more_own = {}
            self.more[token] = expires
            self.more_own[token] = owner
        self.count += 1
        if expires != INFINITY:
            self.nttl += 1
        if not shared:
            self.exclusive = True
        return 0

    cdef int set_expires(self, uint64_t token, double expires) except -1:
        cdef double old = self.expires(token)
        self.nttl += (expires != INFINITY) - (old != INFINITY)
        if token == self.tok1:
            self.exp1 = expires
        else:
            self.more[token] = expires
        return 0

    cdef int set_owner(self, uint64_t token, unsigned long long owner) except -1:
        if token == self.tok1:
            self.own1 = owner
        else:
            self.more_own[token] = owner
        return 0

    cdef bint drop(self, uint64_t token) except -1:
        cdef double expires
        if token == 0:
            return False
        if token == self.tok1:
            expires = self.exp1
            self.tok1 = 0
        elif self.more is not None and token in self.more:
            expires = self.more.pop(token)
            del self.more_own[token]
        else:
            return False
        self.count -= 1
        if expires != INFINITY:
            self.nttl -= 1
        if self.count == 0:
            self.exclusive = False
        return True

    cdef list owners(self):
        """The thread of each holder."""
        cdef list out = [] if self.tok1 == 0 else [self.own1]
        if self.more_own:
            out.extend(self.more_own.values())
        return out

    cdef list tokens(self):
        cdef list out = [] if self.tok1 == 0 else [self.tok1]
        if self.more:
            out.extend(self.more)
        out.sort()
        return out

    cdef double earliest(self):
        cdef double best = self.exp1 if self.tok1 != 0 else INFINITY
        if self.more:
            best = min(best, min(self.more.values()))
        return best

    cdef void clear_holders(self) noexcept:
        self.tok1 = 0
        self.more = None
        self.more_own = None
        self.count = 0
        self.nttl = 0
        self.exclusive = False


cdef inline uint64_t _as_token(object token) except? 0:
    """A token as uint64; 0 (never issued) for ints out of range."""
    cdef unsigned long long value
    if PyBool_Check(token) or not PyLong_Check(token):
        raise TypeError(f"token must be an int, not {type(token).__name__}")
    # The C call and a manual check, not Cython's try/except: that saves the exception
    # state on every call, and this is on every release.
    value = PyLong_AsUnsignedLongLong(token)
    if value == <unsigned long long>-1 and PyErr_Occurred() != NULL:
        PyErr_Clear()  # negative or over 64 bits: an OverflowError, so never a token of ours
        return 0
    return value


# The process-wide registry of waits: thread serial -> (table, key, waiter) for each thread
# waiting in a LockTable now. A thread adds itself only while holding _waits_guard, right after
# its deadlock check, so checks are serialised and one of two threads closing a cycle at the
# same moment always sees the other. An entry may outlive its wait for a moment: an edge counts
# only while its waiter is still queued and ungranted, which is read under that table's mutex.
# Lock order: _waits_guard, then one table mutex at a time; never the other way round.
cdef dict _waits = {}
_waits_guard = _threading.RLock()  # reentrant: a signal handler may wait while its thread walks


def _reset_waits_in_child():
    # The child has one thread: the others' waits are void, and the guard may be held by one of them.
    global _waits_guard
    _waits_guard = _threading.RLock()
    _waits.clear()


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_reset_waits_in_child)


cdef object _walk(LockTable table, object key, _Waiter waiter, object me, bint forever):
    """With ``_waits_guard`` held: the path from ``waiter`` back to thread ``me`` in the wait-for graph, or None.

    ``forever`` false (a timed wait): this thread holding ``key`` itself is no
    cycle (SPEC §3: such a wait just times out), but the walk goes on through
    the other holders, so a cycle among threads is still found.

    Depth first over ``key -> the threads holding it -> the key each of them
    waits for (the registry) -> ...``, one table mutex at a time. The path is
    ``(key, ident)`` steps: ``key`` is held by the thread ``ident``
    (``threading.get_ident()``), which waits for the next step's key; the
    last step's thread is this one.
    """
    cdef list stack = [(table, key, waiter, [])]
    cdef set seen = set()
    cdef set expanded = set()  # (table, key) whose holders are listed already
    cdef list path
    cdef tuple edge
    while stack:
        at, at_key, at_waiter, path = stack.pop()
        slot = (at, at_key)
        if slot in expanded:  # another waiter of that key: blocked by the same holders, seen already
            continue
        blockers = (<LockTable>at)._blockers(at_key, <_Waiter>at_waiter)
        if blockers is None:  # that wait is over: no edge
            continue
        expanded.add(slot)
        for thread in blockers:
            if thread == me:
                if path or forever:
                    return path + [(at_key, waiter.ident)]
                continue  # a timed wait on a key this thread holds: not a deadlock by itself
            if thread in seen:
                continue
            seen.add(thread)
            edge = _waits.get(thread)
            if edge is not None:  # only a thread that waits can block for ever
                stack.append((edge[0], edge[1], edge[2], path + [(at_key, (<_Waiter>edge[2]).ident)]))
    return None


@cython.wraparound(True)  # cycle[-1]
def _deadlock(key, cycle):
    """The error for a wait on ``key`` that would close ``cycle`` (see ``LockTable._find_cycle``)."""
    if len(cycle) == 1:
        message = (
            f"waiting without a timeout for {key!r} would never end: this thread holds it already"
            " (locks are not reentrant, and a hold belongs to the thread that took it, whichever"
            " thread is to release it; pass a timeout to wait for a release by another thread)"
        )
    else:
        steps = [f"{key!r} is held by thread {cycle[0][1]}"]
        steps += [f"which waits for {waited!r}, held by thread {thread}" for waited, thread in cycle[1:-1]]
        steps.append(f"which waits for {cycle[-1][0]!r}, held by this thread")
        message = f"waiting for {key!r} would deadlock: " + ", ".join(steps)
    return _DeadlockError(message, key=key if isinstance(key, str) else None)


# Plain method descriptors, not bound cyfunctions: CPython's specialised calls reach the
# C function directly, which is most of the cost of an uncontended try_acquire / release.
@cython.binding(False)
@cython.final
cdef class LockTable:
    """An in-process table of keys -> holders with fencing tokens.

    ``clock`` (default ``_time.monotonic``) measures TTLs. With the default
    clock a waiter behind a TTL holder wakes by itself when the lease runs out;
    with an injected clock, advance it and call ``expire()`` or ``acquire()``.

    Each holder belongs to the thread that acquired it. A blocking acquire
    (timeout not 0) that would wait for this thread itself, directly or
    through other threads' waits in any table of this process, raises
    :class:`kannuki.errors.DeadlockError` at once instead of waiting.
    """

    cdef PyThread_type_lock _mutex
    cdef dict _entries
    cdef uint64_t _next_token
    cdef object _clock
    cdef bint _realtime
    cdef _Entry _parked         # the one idle entry kept for reuse (see _forget_if_idle), or None
    cdef object _parked_key

    def __cinit__(self, clock=None):
        self._mutex = PyThread_allocate_lock()
        if self._mutex == NULL:
            raise MemoryError("cannot allocate the lock table's mutex")
        self._entries = {}
        self._next_token = 1
        self._realtime = clock is None
        self._clock = _time.monotonic if clock is None else clock

    def __dealloc__(self):
        if self._mutex != NULL:
            PyThread_free_lock(self._mutex)

    def __repr__(self):
        in_use = sum([not (<_Entry>entry).idle() for entry in self._entries.values()])
        return f"<LockTable keys={in_use} next_token={self._next_token}>"

    # -- internals ------------------------------------------------------------------

    cdef inline void _lock(self) noexcept:
        # Uncontended: no GIL round trip. Contended: wait without the GIL.
        if not PyThread_acquire_lock(self._mutex, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self._mutex, WAIT_LOCK)

    cdef inline void _unlock(self) noexcept:
        PyThread_release_lock(self._mutex)

    cdef uint64_t _add(self, _Entry entry, bint shared, double ttl, unsigned long long owner) except 0:
        cdef uint64_t token = self._next_token
        cdef double expires = INFINITY
        if ttl != INFINITY:
            expires = <double>self._clock() + ttl
        self._next_token += 1
        entry.put(token, shared, expires, owner)
        return token

    cdef int _grant(self, _Entry entry) except -1:
        """Hand the key to the head waiter(s) that fit, then wake them."""
        cdef _Waiter waiter
        cdef bint granted_ttl = False
        while entry.has_waiters():
            waiter = <_Waiter>entry.waiters[0]
            if not entry.grantable(waiter.shared):
                break
            entry.waiters.popleft()
            waiter.token = self._add(entry, waiter.shared, waiter.ttl, waiter.thread)
            granted_ttl = granted_ttl or waiter.ttl != INFINITY
            waiter.signal()
        if granted_ttl:
            self._kick(entry)
        return 0

    cdef int _kick(self, _Entry entry) except -1:
        # Holders' expiry changed: waiters recompute how long they may sleep.
        if self._realtime and entry.has_waiters():
            for waiter in entry.waiters:
                (<_Waiter>waiter).signal()
        return 0

    cdef Py_ssize_t _evict(self, _Entry entry) except -1:
        cdef double now
        cdef list dead
        if entry.nttl == 0:
            return 0
        now = self._clock()
        dead = []
        if entry.tok1 != 0 and entry.exp1 <= now:
            dead.append(entry.tok1)
        if entry.more:
            dead.extend([token for token, expires in entry.more.items() if expires <= now])
        for token in dead:
            entry.drop(token)
        if dead:
            self._grant(entry)
        return len(dead)

    cdef inline int _forget_if_idle(self, object key, _Entry entry) except -1:
        # An idle entry stays as the table's one parked entry, so a key taken and released
        # over and over costs no allocation, no dict insert / delete and (see _entry) no
        # lookup. The entry parked before it is dropped if still idle: one idle entry at most.
        if entry is self._parked or not entry.idle():
            return 0
        return self._park(key, entry)

    cdef int _park(self, object key, _Entry entry) except -1:
        # Invariant: the parked entry is the table's entry for the parked key.
        cdef _Entry parked = self._parked
        if self._entries.get(key) is not entry:
            return 0
        if parked is not None and parked.idle():
            del self._entries[self._parked_key]
        self._parked = entry
        self._parked_key = key
        return 0

    cdef _Entry _entry(self, object key):
        cdef object found
        cdef _Entry entry
        if key is self._parked_key and self._parked is not None:
            found = self._parked  # the same key object as last time: its entry, without a lookup
        else:
            found = self._entries.get(key)
        # Common case first: no entry, or one without TTL holders.
        if found is None:
            return None
        entry = <_Entry>found
        if entry.nttl != 0 and self._evict(entry):
            self._forget_if_idle(key, entry)
            found = self._entries.get(key)
            return None if found is None else <_Entry>found
        return entry

    cdef Py_ssize_t _expire_all(self) except -1:
        cdef Py_ssize_t evicted = 0
        cdef _Entry entry
        for key, found in list(self._entries.items()):
            entry = <_Entry>found
            if entry.nttl:
                evicted += self._evict(entry)
                self._forget_if_idle(key, entry)
        return evicted

    # -- public API -----------------------------------------------------------------

    def acquire(self, key, shared=False, timeout=None, ttl=None):
        """Take ``key``; return a fencing token (> 0), or 0 when not acquired in ``timeout``.

        ``timeout`` None waits forever, 0 tries once. Waiters are served FIFO
        and a new request never overtakes a queued one. The wait is
        interruptible (Ctrl-C): the exception propagates with nothing held
        or queued, even when the key was handed over just before.

        A wait that can never end raises :class:`kannuki.errors.DeadlockError`
        at once, with nothing held or queued: a wait without a timeout for a
        key this thread holds already (exclusive, or shared while an
        exclusive request is queued or this one is exclusive), or any wait,
        timed or not, for a key held by a thread that waits, directly or
        through other threads, for a key this thread holds, in any table of
        this process. A timed wait on a key only this thread blocks just
        times out (SPEC §3); a try (``timeout=0``) answers 0.
        """
        cdef double wait = _check_wait("timeout", timeout, False)
        cdef double lease = _check_wait("ttl", ttl, True)
        cdef bint is_shared = shared
        cdef uint64_t token = 0
        cdef _Entry entry
        cdef _Waiter waiter = None
        self._lock()
        try:
            token = self._take_now(key, is_shared, lease, kannuki_thread_serial())
            if not token and wait != 0:
                entry = <_Entry>self._entries[key]  # _take_now found it held or queued
                waiter = _Waiter.__new__(_Waiter)
                waiter.shared = is_shared
                waiter.ttl = lease
                waiter.thread = kannuki_thread_serial()
                waiter.ident = PyThread_get_thread_ident()
                waiter.lock = _threading.Lock()
                waiter.lock.acquire()
                if entry.waiters is None:
                    entry.waiters = _deque()
                entry.waiters.append(waiter)
        finally:
            self._unlock()
        if token:
            self._signals_or_give_back(key, token)
            return token
        if waiter is None:
            return 0
        return self._wait(key, waiter, wait)

    def try_acquire(self, key, bint shared):
        """``acquire(key, shared, 0, None)`` for callers whose arguments are already valid: one try, no TTL.

        The uncontended hot path: a token (> 0), or 0 when ``key`` is held or
        has waiters (then call ``acquire`` to wait).
        """
        return self._try(key, shared)

    cdef uint64_t _try(self, object key, bint shared) except? 0:
        """``try_acquire`` for C callers (the plain Lock's fast path)."""
        cdef uint64_t token = 0
        self._lock()
        try:
            token = self._take_now(key, shared, INFINITY, kannuki_thread_serial())
        finally:
            self._unlock()
        if token:
            self._signals_or_give_back(key, token)
        return token

    cdef inline int _signals_or_give_back(self, object key, uint64_t token) except -1:
        """With the mutex free, a token taken: run the signal handlers now.

        A signal that came during this call (while the mutex or the GIL was
        waited for, say) is pending: it would raise in the caller as soon as
        this call returns, and the token would be lost. Raised here, the key
        is given back first. What is left is the few instructions between
        this check and the caller's, as after any C call.
        """
        try:
            PyErr_CheckSignals()
        except BaseException:
            self._give_back(key, token)
            raise
        return 0

    cdef int _give_back(self, object key, uint64_t token) except -1:
        cdef object found
        self._lock()
        try:
            found = self._entries.get(key)
            if found is not None and (<_Entry>found).drop(token):
                self._grant(<_Entry>found)
                self._forget_if_idle(key, <_Entry>found)
        finally:
            self._unlock()
        return 0

    cdef uint64_t _take_now(self, object key, bint shared, double lease, unsigned long long owner) except? 0:
        """With the mutex held: a new holder of ``key`` when it is free for ``shared`` and nobody queues; else 0."""
        cdef _Entry entry = self._entry(key)
        if entry is None:
            entry = _Entry.__new__(_Entry)
            self._entries[key] = entry
        elif entry.has_waiters() or not entry.grantable(shared):
            return 0
        return self._add(entry, shared, lease, owner)

    cdef object _wait(self, object key, _Waiter waiter, double wait):
        cdef double deadline
        cdef double sleep
        cdef object found
        cdef uint64_t token = 0
        cdef object me = waiter.thread
        cdef object outer = _waits.get(me)  # a wait of this thread that a signal handler interrupted
        try:
            # SPEC §3: a thread that waits WITHOUT END for a key it holds itself, or any wait that
            # closes a cycle among threads. A timed wait on one's own key just times out.
            cycle = self._find_cycle(key, waiter, wait == INFINITY)
            if cycle is not None:
                self._lock()
                try:
                    if not waiter.token:  # else granted meanwhile: the cycle is gone, take the key
                        self._abandon(key, waiter)
                finally:
                    self._unlock()
                if not waiter.token:
                    raise _deadlock(key, cycle)
            deadline = <double>_time.monotonic() + wait
            while True:
                sleep = deadline - <double>_time.monotonic()
                if self._realtime:
                    sleep = min(sleep, self._sleep_bound(key))
                if sleep > 0:
                    got = waiter.lock.acquire(True, -1 if sleep == INFINITY else min(sleep, _threading.TIMEOUT_MAX))
                else:
                    got = waiter.lock.acquire(False)
                self._lock()
                try:
                    if waiter.signaled:
                        if not got:
                            waiter.lock.acquire(False)  # re-arm: consume the pending wake-up
                        waiter.signaled = False
                    if waiter.token:
                        token = waiter.token
                        break
                    found = self._entries.get(key)
                    if found is not None and (<_Entry>found).nttl and self._evict(<_Entry>found) and waiter.token:
                        token = waiter.token
                        break
                    if deadline - <double>_time.monotonic() <= 0:
                        self._abandon(key, waiter)
                        break
                finally:
                    self._unlock()
            # The GIL was given up to wait: a signal that came as this thread took it back is
            # pending, and would raise in the caller once this returns, losing the token. The
            # pure twin's next bytecode check falls inside its try; here it must be explicit.
            PyErr_CheckSignals()
            return token
        except BaseException:
            # Interrupted (a signal handler's exception, e.g. Ctrl-C), anywhere up to the return:
            # give back a key handed over meanwhile, or leave the queue.
            self._lock()
            try:
                found = self._entries.get(key)
                if waiter.token:
                    if found is not None and (<_Entry>found).drop(waiter.token):
                        self._grant(<_Entry>found)
                        self._forget_if_idle(key, <_Entry>found)
                else:
                    self._abandon(key, waiter)
            finally:
                self._unlock()
            raise
        finally:
            if outer is None:
                _waits.pop(me, None)
            else:
                with _waits_guard:
                    _waits[me] = outer

    cdef object _find_cycle(self, object key, _Waiter waiter, bint forever):
        """With no table mutex held: the wait-for cycle that ``waiter`` would close, or None.

        None also registers the wait in the process-wide registry, in the same
        critical section as the check: of two threads closing a cycle at once,
        the second one always sees the first. The cycle is as ``_walk`` gives it.
        """
        cdef object me = waiter.thread
        with _waits_guard:
            cycle = _walk(self, key, waiter, me, forever)
            if cycle is None:
                _waits[me] = (self, key, waiter)
            return cycle

    cdef list _blockers(self, object key, _Waiter waiter):
        """The threads (serials) of the holders that ``waiter`` (queued for ``key``) waits for; None once it no longer waits.

        Every holder counts, shared ones for a shared waiter too: a waiter that
        is not granted at once queues behind a holder it conflicts with, or
        behind a waiter ahead (no barging) that waits for the holders. The
        waiters ahead add nothing else to the graph: they wait for the same
        holders, in this key only.
        """
        cdef _Entry entry
        self._lock()
        try:
            entry = self._entry(key)  # expired leases do not block
            if entry is None or waiter.token or waiter.gone:
                return None
            return entry.owners()
        finally:
            self._unlock()

    cdef double _sleep_bound(self, object key) except? -1.0:
        cdef object found
        cdef double earliest
        self._lock()
        try:
            found = self._entries.get(key)
            if found is None or (<_Entry>found).nttl == 0:
                return INFINITY
            earliest = (<_Entry>found).earliest()
            return max(earliest - <double>self._clock(), 0.0) + 0.0005
        finally:
            self._unlock()

    cdef int _abandon(self, object key, _Waiter waiter) except -1:
        cdef object found
        cdef _Entry entry
        if waiter.gone:
            return 0
        waiter.gone = True
        found = self._entries.get(key)
        if found is None:
            return 0
        entry = <_Entry>found
        if entry.waiters is not None:
            try:
                entry.waiters.remove(waiter)
            except ValueError:
                pass
        self._grant(entry)  # the ones behind may fit now
        self._forget_if_idle(key, entry)
        return 0

    def release(self, key, token):
        """Compare-and-delete: free the holder ``token`` of ``key``; False when it is not a holder."""
        return self._free(key, _as_token(token))

    cdef bint _free(self, object key, uint64_t token) except -1:
        """``release`` for C callers (the plain Lock's fast path)."""
        cdef _Entry entry
        self._lock()
        try:
            entry = self._entry(key)
            if entry is None or not entry.drop(token):
                return False
            if entry.has_waiters():
                self._grant(entry)
            self._forget_if_idle(key, entry)
            return True
        finally:
            self._unlock()

    def renew(self, key, token, ttl):
        """Give holder ``token`` a new TTL from now (None: no TTL); False when it is not a holder."""
        cdef uint64_t tok = _as_token(token)
        cdef double lease = _check_wait("ttl", ttl, True)
        cdef _Entry entry
        self._lock()
        try:
            entry = self._entry(key)
            if entry is None or not entry.has(tok):
                return False
            entry.set_expires(tok, INFINITY if lease == INFINITY else <double>self._clock() + lease)
            self._kick(entry)
            return True
        finally:
            self._unlock()

    def disown(self, key, token):
        """Make holder ``token`` of ``key`` nobody's: no thread waits "for itself" on it; False when it is not a holder.

        For a hold taken on behalf of someone else (a simulated holder, a
        hold that another thread is to release): a wait for it is an ordinary
        wait, never a DeadlockError.
        """
        cdef uint64_t tok = _as_token(token)
        cdef _Entry entry
        self._lock()
        try:
            entry = self._entry(key)
            if entry is None or not entry.has(tok):
                return False
            entry.set_owner(tok, 0)  # serials start at 1: 0 is no thread
            return True
        finally:
            self._unlock()

    def held(self, key):
        """Whether ``key`` has a holder now."""
        cdef _Entry entry
        self._lock()
        try:
            entry = self._entry(key)
            return entry is not None and entry.count > 0
        finally:
            self._unlock()

    def holders(self, key):
        """``(token, shared, expires_at)`` for each current holder of ``key``, oldest first."""
        cdef _Entry entry
        cdef double expires
        cdef list out = []
        self._lock()
        try:
            entry = self._entry(key)
            if entry is None:
                return out
            for token in entry.tokens():
                expires = entry.expires(token)
                out.append((token, not entry.exclusive, None if expires == INFINITY else expires))
            return out
        finally:
            self._unlock()

    def waiters(self, key):
        """How many threads wait for ``key``."""
        cdef object found
        self._lock()
        try:
            found = self._entries.get(key)
            if found is None or (<_Entry>found).waiters is None:
                return 0
            return len((<_Entry>found).waiters)
        finally:
            self._unlock()

    def keys(self):
        """The keys held now."""
        self._lock()
        try:
            self._expire_all()
            return [key for key, entry in self._entries.items() if (<_Entry>entry).count]
        finally:
            self._unlock()

    def expire(self):
        """Evict holders whose TTL ran out (by the table's clock), hand off to waiters; return how many."""
        self._lock()
        try:
            return self._expire_all()
        finally:
            self._unlock()

    def clear(self):
        """Drop every holder and hand the keys to their waiters."""
        cdef _Entry entry
        self._lock()
        try:
            for key, found in list(self._entries.items()):
                entry = <_Entry>found
                entry.clear_holders()
                self._grant(entry)
                self._forget_if_idle(key, entry)
        finally:
            self._unlock()

    def reset_after_fork(self):
        """In a forked child: new internal mutex, no holders, no waiters; tokens go on increasing."""
        cdef PyThread_type_lock fresh = PyThread_allocate_lock()
        if fresh == NULL:
            raise MemoryError("cannot allocate the lock table's mutex")
        # The old mutex may be held by a thread that does not exist here: drop it unused.
        self._mutex = fresh
        self._entries = {}
        self._parked = None
        self._parked_key = None

    def __len__(self):
        """The number of keys held now."""
        cdef Py_ssize_t n = 0
        self._lock()
        try:
            self._expire_all()
            for entry in self._entries.values():
                if (<_Entry>entry).count:
                    n += 1
            return n
        finally:
            self._unlock()


# ---------------------------------------------------------------------------------
# Counters: a locker's stats. Each method runs without releasing the GIL and
# without executing Python bytecode, so the increments need no lock.
# ---------------------------------------------------------------------------------

_monotonic = _time.monotonic

cdef extern from *:
    """
    /* time.monotonic() without a Python call where we know its clock: on Linux CPython
       reads CLOCK_MONOTONIC and converts nanoseconds to seconds as below. Elsewhere
       (macOS: mach_absolute_time, Windows: QueryPerformanceCounter) 0 is returned and
       the caller asks time.monotonic(). */
    #if defined(__linux__)
    #include <time.h>
    static double kannuki_monotonic(void) {
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0.0;
        return (double)((long long)ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9;
    }
    #else
    static double kannuki_monotonic(void) { return 0.0; }
    #endif
    """
    double kannuki_monotonic() nogil


cdef inline double _now() except? -1.0:
    cdef double now = kannuki_monotonic()
    return now if now != 0.0 else <double>_monotonic()


@cython.binding(False)  # as LockTable: the hot pair acquired() / released() is called per lock
@cython.final
cdef class Counters:
    """Counts of a locker's outcomes and its total hold time.

    ``acquired()`` and ``released(since)`` are the hot pair: they also read the
    monotonic clock, so the caller needs no clock call of its own.
    """

    cdef unsigned long long _acquired, _failed, _timeouts, _released
    cdef unsigned long long _lost, _renewed, _renew_failed
    cdef double _hold_time

    def acquired(self):
        """Count one acquisition; return ``time.monotonic()`` (the start of the hold)."""
        return self._count_acquire()

    def released(self, double since):
        """Count one release of a hold that began at ``since``; return the seconds held."""
        return self._count_release(since)

    cdef inline double _count_acquire(self) except? -1.0:
        self._acquired += 1
        return _now()

    cdef inline double _count_release(self, double since) except? -1.0:
        cdef double held = _now() - since
        self._released += 1
        self._hold_time += held
        return held

    def add(self, str name):
        """Count one of: failed, timeouts, lost, renewed, renew_failed."""
        if name == "failed":
            self._failed += 1
        elif name == "timeouts":
            self._timeouts += 1
        elif name == "lost":
            self._lost += 1
        elif name == "renewed":
            self._renewed += 1
        elif name == "renew_failed":
            self._renew_failed += 1
        else:
            raise ValueError(f"name must be one of {_COUNTER_NAMES}, not {name!r}")

    def snapshot(self):
        """``(acquired, failed, timeouts, released, lost, renewed, renew_failed, hold_time)``."""
        return (
            self._acquired, self._failed, self._timeouts, self._released,
            self._lost, self._renewed, self._renew_failed, self._hold_time,
        )


_COUNTER_NAMES = ("failed", "timeouts", "lost", "renewed", "renew_failed")


# ---------------------------------------------------------------------------------
# The plain Lock: a lock on an in-process table with nothing else to keep (no lease, no
# transaction). Its uncontended acquire and release are one C call each: the table's try,
# the keeper's token set, the stats; the API layer's Lock subclasses do everything else.
# ---------------------------------------------------------------------------------

cdef tuple _NO_ARGS = ()

cdef extern from "Python.h":
    # Borrowed, NULL when absent; the keys here (an interned str, a small int) never raise on hashing
    # or comparing, so NULL is never an error. Unlike PyDict_GetItem it saves no exception state.
    PyObject* PyDict_GetItemWithError(object mapping, object key)
    PyObject* Py_False
    int PyObject_IsTrue(PyObject* o) except -1

cdef Py_ssize_t _NAMES_KEPT = 1024  # keys whose name and ID one locker remembers (then it starts over)
cdef dict _events_ns = _events.__dict__  # SUBSCRIBERS is rebound there, never mutated: read it each time
cdef str _SUBSCRIBERS = "SUBSCRIBERS"
cdef object _DEBUG_LEVEL = 10  # logging.DEBUG


cdef inline Py_ssize_t _slot_of(uint64_t token, Py_ssize_t mask) noexcept nogil:
    # Fibonacci hashing: consecutive tokens (the common case) spread over the table.
    return <Py_ssize_t>((token * <uint64_t>0x9E3779B97F4A7C15) >> 32) & mask


@cython.binding(False)
@cython.final
cdef class TokenSet:
    """A set of fencing tokens (ints > 0 that fit in 64 bits): one locker's plain holds in ``table``.

    The keeper's record of what it holds there, for ``close()``, the GC and
    ``lock.lost``; the plain Lock adds and removes its token in C, with no int
    object made. Behaves as a set of ints: ``add``, ``remove`` (KeyError when
    absent), ``discard``, ``in``, ``len``, iteration, ``clear``.
    """

    cdef public object table
    cdef uint64_t* _slots       # open addressing, linear probing; 0 is an empty slot
    cdef Py_ssize_t _mask       # capacity - 1 (capacity a power of 2), -1 before the first add
    cdef Py_ssize_t _used

    def __cinit__(self, table=None):
        self._slots = NULL
        self._mask = -1
        self._used = 0

    def __init__(self, table=None):
        self.table = table

    def __dealloc__(self):
        PyMem_Free(self._slots)

    cdef int _grow(self) except -1:
        cdef Py_ssize_t old_cap = self._mask + 1
        cdef Py_ssize_t cap = 8 if old_cap == 0 else old_cap * 2
        cdef uint64_t* old = self._slots
        cdef uint64_t* fresh = <uint64_t*>PyMem_Malloc(cap * sizeof(uint64_t))
        cdef Py_ssize_t i, j
        if fresh == NULL:
            raise MemoryError()
        for i in range(cap):
            fresh[i] = 0
        self._slots = fresh
        self._mask = cap - 1
        for i in range(old_cap):
            if old[i]:
                j = _slot_of(old[i], self._mask)
                while fresh[j]:
                    j = (j + 1) & self._mask
                fresh[j] = old[i]
        PyMem_Free(old)
        return 0

    cdef Py_ssize_t _find(self, uint64_t token) noexcept:
        """The slot holding ``token``, or -1."""
        cdef Py_ssize_t i
        if self._used == 0 or token == 0:
            return -1
        i = _slot_of(token, self._mask)
        while self._slots[i]:
            if self._slots[i] == token:
                return i
            i = (i + 1) & self._mask
        return -1

    cdef int _add(self, uint64_t token) except -1:
        cdef Py_ssize_t i
        if (self._used + 1) * 2 > self._mask + 1:  # at most half full: short probes
            self._grow()
        i = _slot_of(token, self._mask)
        while self._slots[i]:
            if self._slots[i] == token:
                return 0
            i = (i + 1) & self._mask
        self._slots[i] = token
        self._used += 1
        return 0

    cdef bint _discard(self, uint64_t token) noexcept:
        """Remove ``token``; True when it was there. Backward-shift deletion: no tombstones."""
        cdef Py_ssize_t hole = self._find(token)
        cdef Py_ssize_t i, home
        if hole < 0:
            return False
        self._slots[hole] = 0
        self._used -= 1
        i = (hole + 1) & self._mask
        while self._slots[i]:
            home = _slot_of(self._slots[i], self._mask)
            # Move the entry back into the hole unless its home lies cyclically in (hole, i].
            if (i > hole and (home <= hole or home > i)) or (i < hole and home <= hole and home > i):
                self._slots[hole] = self._slots[i]
                self._slots[i] = 0
                hole = i
            i = (i + 1) & self._mask
        return True

    def add(self, token):
        """Record ``token`` (an int > 0)."""
        cdef uint64_t tok = _as_token(token)
        if tok == 0:
            raise ValueError(f"token must be an int in 1..2**64-1, got {token!r}")
        self._add(tok)

    def remove(self, token):
        """Forget ``token``; KeyError when it is not recorded."""
        if not self._discard(_as_token(token)):
            raise KeyError(token)

    def discard(self, token):
        """Forget ``token`` if it is recorded."""
        self._discard(_as_token(token))

    def clear(self):
        """Forget every token."""
        cdef Py_ssize_t i
        for i in range(self._mask + 1):
            self._slots[i] = 0
        self._used = 0

    def __contains__(self, token):
        if PyBool_Check(token) or not PyLong_Check(token):
            return False
        return self._find(_as_token(token)) >= 0

    def __len__(self):
        return self._used

    def __iter__(self):
        cdef Py_ssize_t i
        cdef list out = []
        for i in range(self._mask + 1):
            if self._slots[i]:
                out.append(self._slots[i])
        out.sort()
        return iter(out)

    def __repr__(self):
        return f"TokenSet({sorted(self)!r})"


@cython.binding(False)
@cython.final
cdef class PlainPath:
    """One locker's way to its plain holds: the table they go to, the token set that records them.

    ``keeper`` (the hold owner) is told of each plain acquisition and release
    only when someone listens: ``instrumented`` and an event subscriber, or
    ``log_levels`` (the ``kannuki`` logger's per-level cache) not saying that
    DEBUG is off. ``generation`` is the fork generation the holds belong to;
    the keeper moves it on in a forked child.
    """

    cdef public object keeper
    cdef public Counters stats
    cdef public bint instrumented
    cdef public long long generation
    cdef LockTable _table
    cdef TokenSet _tokens
    cdef dict _log_levels
    # What make() needs: the locker's defaults, and the full name and lock ID of recent keys.
    cdef object _prefix
    cdef object _default_timeout
    cdef object _strategy
    cdef object _unset            # the sentinel of a timeout the caller did not give
    cdef dict _names              # exact-str key -> (full name, lock ID), at most _NAMES_KEPT
    cdef type _checked            # the last class make() found to be a LockBase subclass

    def __init__(
        self, keeper=None, Counters stats=None, bint instrumented=True, long long generation=0, dict log_levels=None
    ):
        self.keeper = keeper
        self.stats = Counters() if stats is None else stats
        self.instrumented = instrumented
        self.generation = generation
        self._log_levels = {} if log_levels is None else log_levels
        self._names = {}
        self._strategy = "blocking"
        self._unset = self  # nothing the caller passes: every timeout counts as given

    def set_defaults(self, prefix, default_timeout, strategy, unset):
        """The locker's key prefix, default timeout and strategy for make(); ``unset`` stands for "no timeout given"."""
        if prefix is not None and not PyUnicode_Check(prefix):
            raise TypeError(f"prefix must be a str or None, not {type(prefix).__name__}")
        self._prefix = prefix
        self._default_timeout = default_timeout
        self._strategy = strategy
        self._unset = unset
        self._names = {}

    def make(
        self, type cls, locker, key, timeout, shared, strategy, ttl, transaction, on_lost, cancel_on_lost
    ):
        """A new ``cls`` (a LockBase subclass) on ``key`` with the locker's defaults; None when an option was given.

        The fast way of ``locker.lock(key)``: the key is validated and hashed
        once per distinct key (recent ones are remembered), and no argument
        parsing is done. ``cls`` must be a subclass of LockBase.
        """
        cdef LockBase lock
        cdef tuple found
        if not (
            timeout is self._unset and shared is False and strategy is None and ttl is None
            and transaction is None and on_lost is None and cancel_on_lost is False
        ):
            return None
        if cls is not self._checked:
            if not issubclass(cls, LockBase):
                raise TypeError(f"cls must be a subclass of LockBase, not {cls.__name__}")
            self._checked = cls
        found = None
        if PyUnicode_CheckExact(key):
            found = <tuple>self._names.get(key)
        if found is None:
            name, lock_id = name_and_id(key, self._prefix)
            found = (name, lock_id)
            if PyUnicode_CheckExact(key):
                if len(self._names) >= _NAMES_KEPT:
                    self._names.clear()
                self._names[key] = found
        # The class's own allocator, as ``cls()`` would call it, without the argument tuple or __init__.
        lock = <LockBase>(<PyTypeObject*>cls).tp_new(cls, <PyObject*>_NO_ARGS, NULL)
        lock._path = self
        lock.locker = locker
        lock.key = key
        lock.name = found[0]
        lock.lock_id = found[1]
        lock.timeout = self._default_timeout
        lock.strategy = self._strategy
        return lock

    @property
    def table(self):
        """The table plain holds go to now, or None (no plain path)."""
        return self._table

    @property
    def tokens(self):
        """The set recording the tokens held in ``table``, or None."""
        return self._tokens

    def use(self, LockTable table, TokenSet tokens):
        """Send plain holds to ``table``, recorded in ``tokens`` (None, None: no plain path)."""
        if (table is None) != (tokens is None):
            raise TypeError("use() takes a LockTable and its TokenSet, or None and None")
        self._table = table
        self._tokens = tokens

    cdef inline bint _listening(self) except -1:
        cdef PyObject* found
        if self.instrumented:
            found = PyDict_GetItemWithError(_events_ns, _SUBSCRIBERS)
            if found != NULL and PyObject_IsTrue(found):
                return True
        return PyDict_GetItemWithError(self._log_levels, _DEBUG_LEVEL) != Py_False  # only a cached False is quiet


# Plain method descriptors, as LockTable: CPython's specialised calls reach the C functions directly.
@cython.binding(False)
cdef class LockBase:
    """The state of a Lock, and its plain fast path (the base of ``AsyncLock``; ``Lock`` has ``SyncLockBase``).

    The subclass provides ``_abandon()`` (called when a Lock that holds is
    garbage-collected); everything but the plain path is its business.
    """

    cdef public object locker
    cdef public object key
    cdef public object name
    cdef public object lock_id
    cdef public object timeout
    cdef public bint shared
    cdef public object strategy
    cdef public object ttl
    cdef public object transaction
    cdef public object on_lost
    cdef public bint cancel_on_lost
    cdef public object _hold
    cdef uint64_t _token        # the plain hold's token, 0 when none
    cdef public bint _busy
    cdef readonly TokenSet _plain_set  # the keeper's record of the plain hold
    cdef public double _since
    cdef public long long _generation
    cdef public bint _spent
    cdef public object _scope  # the async cancel_on_lost scope of the running block, or None
    cdef PlainPath _path
    cdef LockTable _table
    cdef object __weakref__

    def __init__(
        self, PlainPath path=None, locker=None, key=None, name=None, lock_id=None, timeout=None,
        bint shared=False, strategy=None, ttl=None, transaction=None, on_lost=None, bint cancel_on_lost=False,
    ):
        # ``path`` None: a path to no table, so every acquire takes the subclass's general way.
        self._path = PlainPath() if path is None else path
        self.locker = locker
        self.key = key
        self.name = name  # the full name: prefix and key
        self.lock_id = lock_id
        self.timeout = timeout
        self.shared = shared
        self.strategy = strategy
        self.ttl = ttl
        self.transaction = transaction
        self.on_lost = on_lost
        self.cancel_on_lost = cancel_on_lost

    @property
    def _plain(self):
        """The token of the current plain hold, 0 when none (only 0 may be set: forget it)."""
        return self._token

    @_plain.setter
    def _plain(self, value):
        if value != 0:
            raise ValueError("_plain can only be reset to 0")
        self._token = 0

    def __del__(self):
        if self._token or self._hold is not None:
            try:
                self._abandon()
            except Exception:  # at interpreter exit the modules may be half gone
                pass

    def _try_plain(self):
        """Take the lock as a plain hold if it is one and its key is free now; True when taken.

        False (nothing changed) when this Lock holds or held something, is busy
        acquiring, is not plain (a lease, a transaction), its locker has no
        plain path, or the key is held or queued for.
        """
        return self._take()

    def _release_plain(self):
        """Release the current plain hold; True when released, False (nothing changed) when there is none.

        A plain hold that is gone (``Locker.close()``, a cleared table) raises
        the keeper's LockLostError, and reports the loss once.
        """
        return self._give()

    cdef bint _take(self) except -1:
        cdef PlainPath path = self._path
        cdef LockTable table = path._table
        cdef uint64_t token
        if (
            table is None or self._token or self._hold is not None or self._busy
            or self.ttl is not None or self.transaction is not None
        ):
            return False
        token = table._try(self.name, self.shared)
        if token == 0:
            return False
        tokens = path._tokens
        try:
            tokens._add(token)  # from here on the keeper owns it
        except BaseException:  # no memory to record it: give it back
            table._free(self.name, token)
            raise
        self._plain_set = tokens
        self._table = table
        self._since = path.stats._count_acquire()
        self._generation = path.generation
        self._spent = False
        self._token = token
        if path._listening():
            path.keeper.plain_acquired(self, token)
        return True

    cdef bint _give(self) except -1:
        cdef PlainPath path = self._path
        cdef double held_for
        cdef bint recorded
        cdef uint64_t token = self._token
        if not token or self._generation != path.generation or self._spent:
            return False
        recorded = self._plain_set._discard(token)
        if recorded and self._table._free(self.name, token):
            self._token = 0
            held_for = path.stats._count_release(self._since)
            if path._listening():
                path.keeper.plain_released(self, token, held_for)
            return True
        self._spent = True  # keep the token: ``lock.lost`` stays True until the next acquire
        raise path.keeper.plain_not_released(self, token, self._since, recorded)


@cython.binding(False)
cdef class SyncLockBase(LockBase):
    """``LockBase`` with the sync Lock's verbs: the plain path in C, the rest in the subclass.

    The subclass provides ``_acquire(blocking, timeout)`` (every acquire the
    plain path does not take), ``_release_hold()`` (every release that is not
    of a plain hold) and ``_enter()`` (``with``, when the plain path did not take it).
    """

    def acquire(self, blocking=True, timeout=None):
        """Acquire the lock; True when acquired.

        ``blocking=False`` tries once. Otherwise the lock's strategy applies,
        waiting up to ``timeout`` seconds (None: the timeout this lock was
        made with, which may itself be None for "forever").

        Raises AlreadyHeldError if this object already holds the lock,
        ValueError for a bad timeout, BackendError when the store fails.
        """
        if timeout is None and self._take():
            return True
        return self._acquire(blocking, timeout)

    def release(self):
        """Release the lock.

        Raises NotHeldError when this object does not hold it, LockLostError
        when the store lost it while it was held (the lock is gone either way).
        """
        if not self._give():
            self._release_hold()

    def __enter__(self):
        if self._take():
            return self
        return self._enter()

    def __exit__(self, exc_type, exc, traceback):
        if not self._give():
            self._release_hold()
