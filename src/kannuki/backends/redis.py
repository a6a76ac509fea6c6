# WARNING: generated from src/kannuki/backends/redis_async.py by tools/async_to_sync.py.
# Do not edit: change the async source and run `python tools/async_to_sync.py`.
"""``redis://``: leases in Redis or Valkey, driven by redis-py (async source; ``redis.py`` is generated).

It drives a ``redis.Redis`` client, or any client with its interface
(valkey-py's, a fake ...). Every acquisition is a lease: a key that expires
unless renewed (the hold owner renews it every ttl/3 through ``renew``). Each
change is one Lua script, so it is one round trip and atomic:

- acquire: ``INCR`` the key's token counter and ``SET ... PX ttl`` the lock
  key, only when no one holds it (exclusive) or no writer holds it or waits
  for it (shared);
- release: compare-and-delete by the acquisition's owner value, then
  ``PUBLISH`` so waiters wake at once instead of polling;
- renew: compare-and-extend by owner value; check: compare only.

Keys, under the ``namespace`` (default ``kannuki``) and the full lock name::

    {namespace}:lock:{name}      exclusive holder: "owner|token|pid|since_ms|host", expires
    {namespace}:readers:{name}   shared holders: hash owner -> "expires_ms|token|pid|since_ms|host"
    {namespace}:token:{name}     the fencing-token counter (kept, so tokens only grow)
    {namespace}:writers:{name}   waiting writers: sorted set owner -> mark expiry (ms), short PX
    {namespace}:released:{name}  the pub/sub channel a release publishes on

A writer that waits marks its intent in ``writers`` at every try (each mark
expires after ``INTENT_TTL`` unless refreshed, and so does the key): while a
live mark exists no new reader gets in, so overlapping readers cannot starve
a writer (as with PostgreSQL's shared locks), and a dead waiter's mark runs
out by itself. The try that takes the lock, or the waiter giving up, removes it.

The owner value is random per acquisition and made by the client, so an
acquire whose reply was lost (a cancelled task, Ctrl-C, a timeout while
reading) can still be undone by compare-and-delete, and a stale holder can
never free a newer one even if tokens repeated. Tokens do not repeat: the
counter never goes below the server's clock in microseconds, so a Redis that
lost its data (restart without persistence, failover to a lagging replica,
FLUSHALL) still hands out tokens above every earlier one.

Times in scripts come from the server's clock (``TIME``), so clients with
skewed clocks agree on who expired. Only waiters queue in-process (threads on
a lock table, tasks on the event loop): the first one waits on Redis (pub/sub,
or capped backoff for clients without pub/sub) and the rest wait behind it, so
an uncontended acquire is one round trip and a holder never holds the queue.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kannuki._compat import finish, sleep, table_acquire, table_release
from kannuki._core import Backoff, LockTable
from kannuki._core import lock_id as compute_lock_id
from kannuki.backends._lease import DEFAULT_TTL, HOST, INTENT_TTL, check_ttl
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, reject_unknown_options
from kannuki.backends.base import Backend
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["RedisBackend"]

DEFAULT_NAMESPACE = "kannuki"
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 5.0
# list_held stops after this many locks: it is a diagnostic, not a full export.
LIST_HELD_LIMIT = 10_000
# Between tries of a busy key: exponential from 10 ms, capped at 1 s, full jitter. A release
# wakes the waiter at once through pub/sub; the schedule only bounds how long it may miss one.
WAIT_FIRST = 0.01
WAIT_CAP = 1.0
# valkey:// and valkeys:// are spelled redis:// and rediss:// for redis-py.
URL_ALIASES = {"valkey": "redis", "valkeys": "rediss"}

# Helpers of every script. replicate_commands() lets Redis < 5 write after TIME. Numbers go into
# strings through d(): Lua's own tostring() would write a 16-digit token as 1.79e+15.
_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local function d(x) return string.format('%d', x) end
local function server_time()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function owned_by(value, owner)
  return type(value) == 'string' and string.sub(value, 1, #owner + 1) == owner .. '|'
end
"""

# Drop expired shared holders; return how many are left and the ms until the first one expires.
_PURGE_READERS = """
local function live_readers(key, now)
  local fields = redis.call('HGETALL', key)
  local live, soonest = 0, -1
  for i = 1, #fields, 2 do
    local expires = tonumber(string.match(fields[i + 1], '^(%d+)')) or 0
    if expires <= now then
      redis.call('HDEL', key, fields[i])
    else
      live = live + 1
      if soonest < 0 or expires - now < soonest then soonest = expires - now end
    end
  end
  return live, soonest
end
"""

# KEYS: lock, readers, counter, writers. ARGV: shared ("1"/"0"), ttl_ms, owner, pid, host,
# waiting ("1": a writer that waits, so it marks its intent when the key is busy), intent_ms.
# Returns {token, 0} when acquired, else {0, ms until the blocking holder's lease (or writer's
# mark) ends (-1: unknown)}. A second run with the same owner (a client that retried after losing
# the reply) finds its own lease and answers with its token. The token is the counter + 1, but
# never below the server's clock in microseconds (exact in Lua's doubles until the year 2255),
# so it never repeats.
_ACQUIRE = (
    _PRELUDE
    + _PURGE_READERS
    + """
local ttl, owner, waiting = tonumber(ARGV[2]), ARGV[3], ARGV[6] == '1'
local function next_token(now_us)
  local token = redis.call('INCR', KEYS[3])
  if token < now_us then
    token = now_us
    redis.call('SET', KEYS[3], d(token))
  end
  return token
end
local function mark_intent(now)
  if waiting then
    local intent = tonumber(ARGV[7])
    redis.call('ZADD', KEYS[4], now + intent, owner)
    redis.call('PEXPIRE', KEYS[4], intent)
  end
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 then
  if ARGV[1] ~= '1' then
    local value = redis.pcall('GET', KEYS[1])
    if owned_by(value, owner) then return {tonumber(string.match(value, '^[^|]*|(%d+)')), 0} end
    mark_intent(server_time())
  end
  return {0, pttl}
end
local now, now_us = server_time()
if ARGV[1] == '1' then
  local mine = redis.call('HGET', KEYS[2], owner)
  if mine then return {tonumber(string.match(mine, '^%d+|(%d+)')), 0} end
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if first[2] then return {0, tonumber(first[2]) - now} end
  live_readers(KEYS[2], now)
  local token = next_token(now_us)
  redis.call('HSET', KEYS[2], owner, d(now + ttl) .. '|' .. d(token) .. '|' .. ARGV[4] .. '|' .. d(now) .. '|' .. ARGV[5])
  if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
  return {token, 0}
end
local live, soonest = live_readers(KEYS[2], now)
if live > 0 then
  mark_intent(now)
  return {0, soonest}
end
local token = next_token(now_us)
redis.call('SET', KEYS[1], owner .. '|' .. d(token) .. '|' .. ARGV[4] .. '|' .. d(now) .. '|' .. ARGV[5], 'PX', ttl)
if waiting then redis.call('ZREM', KEYS[4], owner) end
return {token, 0}
"""
)

# KEYS: writers, channel. ARGV: owner. A waiting writer gives up: its mark goes, and readers kept
# out by the last mark are woken. Returns 1 when there was a mark.
_WITHDRAW = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 and redis.call('ZCARD', KEYS[1]) == 0 then redis.call('PUBLISH', KEYS[2], '1') end
return removed
"""

# KEYS: lock, readers, channel. ARGV: owner, shared ("1"/"0").
# Returns 1 when released, 0 when the owner no longer held (a reader past its lease is removed, 0).
_RELEASE = (
    _PRELUDE
    + """
local owner = ARGV[1]
if ARGV[2] ~= '1' then
  if not owned_by(redis.pcall('GET', KEYS[1]), owner) then return 0 end
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[3], '1')
  return 1
end
local reader = redis.call('HGET', KEYS[2], owner)
if not reader then return 0 end
local now = server_time()
redis.call('HDEL', KEYS[2], owner)
if redis.call('HLEN', KEYS[2]) == 0 then redis.call('PUBLISH', KEYS[3], '1') end
if (tonumber(string.match(reader, '^(%d+)')) or 0) <= now then return 0 end
return 1
"""
)

# KEYS: lock, readers. ARGV: owner, shared ("1"/"0"), ttl_ms. Returns 1 when extended, 0 when no longer held.
_RENEW = (
    _PRELUDE
    + """
local owner, ttl = ARGV[1], tonumber(ARGV[3])
if ARGV[2] ~= '1' then
  if not owned_by(redis.pcall('GET', KEYS[1]), owner) then return 0 end
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
local reader = redis.call('HGET', KEYS[2], owner)
if not reader then return 0 end
local now = server_time()
local expires, rest = string.match(reader, '^(%d+)(|.*)$')
if not expires or tonumber(expires) <= now then
  redis.call('HDEL', KEYS[2], owner)
  return 0
end
redis.call('HSET', KEYS[2], owner, d(now + ttl) .. rest)
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""
)

# KEYS: lock, readers. ARGV: owner, shared ("1"/"0"). Returns 1 while the owner holds, else 0. Writes nothing.
_CHECK = (
    _PRELUDE
    + """
if ARGV[2] ~= '1' then
  if owned_by(redis.pcall('GET', KEYS[1]), ARGV[1]) then return 1 end
  return 0
end
local reader = redis.call('HGET', KEYS[2], ARGV[1])
if not reader then return 0 end
local now = server_time()
if (tonumber(string.match(reader, '^(%d+)')) or 0) <= now then return 0 end
return 1
"""
)

# KEYS: lock, readers, channel. Deletes every holder's record; returns how many live holders it freed.
_FORCE = (
    _PRELUDE
    + """
local freed = redis.call('EXISTS', KEYS[1])
local now = server_time()
local fields = redis.pcall('HGETALL', KEYS[2])
if fields.err then
  freed = freed + 1
else
  for i = 2, #fields, 2 do
    if (tonumber(string.match(fields[i], '^(%d+)')) or 0) > now then freed = freed + 1 end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
if freed > 0 then redis.call('PUBLISH', KEYS[3], '1') end
return freed
"""
)

# KEYS: lock, readers. Returns {now_ms, exclusive value or false, its pttl, "owner|reader value"...}.
_INSPECT = (
    _PRELUDE
    + """
local now = server_time()
local value = redis.pcall('GET', KEYS[1])
if type(value) ~= 'string' then value = false end
local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 and not value then value = '?' end
local out = {now, value, pttl}
local fields = redis.pcall('HGETALL', KEYS[2])
if not fields.err then
  for i = 2, #fields, 2 do
    local expires = tonumber(string.match(fields[i], '^(%d+)')) or 0
    if expires > now then out[#out + 1] = fields[i - 1] .. '|' .. fields[i] end
  end
end
return out
"""
)


class _Script:
    """A Lua script and its SHA1, run by EVALSHA (EVAL the first time a server has not seen it)."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


ACQUIRE, RELEASE, RENEW, CHECK, FORCE, INSPECT, WITHDRAW = map(
    _Script, (_ACQUIRE, _RELEASE, _RENEW, _CHECK, _FORCE, _INSPECT, _WITHDRAW)
)
# A waiting writer's mark lasts this long unless refreshed (it is, at every try: at least every WAIT_CAP).
INTENT_MS = int(INTENT_TTL * 1000)
_INTENT = b"%d" % INTENT_MS


def _holder_args() -> tuple[bytes, bytes]:
    """The acquire script's pid and host arguments for this process, encoded once."""
    return b"%d" % os.getpid(), HOST.encode()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters, so a namespace is taken literally."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _positive_seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _driver() -> Any:
    """redis-py's client module (imported on first use: redis is an optional extra)."""
    try:
        import redis
    except ModuleNotFoundError:
        raise ConfigurationError("the redis backend needs redis-py: pip install kannuki[redis]") from None
    return redis


def _driver_errors(client: Any) -> tuple[type[BaseException], ...]:
    """What a client raises for a server or network failure: redis-py's RedisError, its own package's, OSError."""
    found: list[type[BaseException]] = [OSError]
    package = sys.modules.get(type(client).__module__.split(".")[0])
    for name in ("RedisError", "ValkeyError"):
        cls = getattr(package, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            found.append(cls)
    try:
        import redis
    except ModuleNotFoundError:
        pass
    else:
        found.append(redis.RedisError)
    return tuple(dict.fromkeys(found))


def _looks_like_client(obj: Any) -> bool:
    """Has redis-py's interface (a connection pool and the commands kannuki sends): redis, valkey, fakes ..."""
    return hasattr(obj, "connection_pool") and all(
        callable(getattr(obj, name, None)) for name in ("eval", "evalsha", "set")
    )


def _is_async_client(obj: Any) -> bool:
    """Is it an asyncio client (its commands are coroutines)?"""
    return any(
        inspect.iscoroutinefunction(getattr(obj, name, None)) for name in ("execute_command", "evalsha")
    )


def _set_timeout(conn: Any, seconds: float | None) -> None:
    """Set a redis-py connection's read timeout: the attribute (asyncio reads) and its socket's (sync reads)."""
    conn.socket_timeout = seconds
    sock = getattr(conn, "_sock", None)
    if sock is not None and callable(getattr(sock, "settimeout", None)):
        sock.settimeout(seconds)


def _handshake_within(connect_timeout: float) -> Callable[[Any], Any]:
    """redis-py's ``redis_connect_func``: the handshake, then a PING, each answer within ``connect_timeout``.

    redis-py bounds only the TCP connect by ``socket_connect_timeout`` and reads
    the handshake's answers with ``socket_timeout``: a server that accepts and
    never answers (hung, or not Redis at all) would take the socket timeout. A
    connection counts as made only once the server has answered, within the
    connect timeout; after that, commands get ``socket_timeout`` again.
    """

    def handshake(conn: Any) -> None:
        saved = conn.socket_timeout
        _set_timeout(conn, connect_timeout)
        try:
            conn.on_connect()
            conn.send_command("PING", check_health=False)
            conn.read_response()
        finally:
            _set_timeout(conn, saved)

    return handshake


def _is_noscript(exc: BaseException) -> bool:
    return type(exc).__name__ == "NoScriptError" or str(exc).startswith("NOSCRIPT")


def _reply_lost(exc: BaseException) -> bool:
    """May the server have run a command whose reply never came (so the acquire must be undone)?"""
    if isinstance(exc, BackendError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if not isinstance(exc, Exception):
        return True  # interrupted (cancellation, KeyboardInterrupt, SystemExit): it may have run
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"ResponseError", "AuthenticationError"}:
        return False  # the server answered with an error: the script wrote nothing
    # redis-py says "connecting" when it could not open a connection: nothing was sent.
    return "connecting" not in str(exc)


def _holder(
    name: str, lock_id: int, shared: bool, record: str, expires_ms: int | None, offset: float
) -> Holder:
    """Parse "owner|token|pid|since_ms|host"; a value kannuki did not write still counts as a holder."""
    expires_at = None if expires_ms is None else expires_ms / 1000 + offset
    try:
        _owner, token, pid, since, host = record.split("|", 4)
        return Holder(
            name=name,
            lock_id=lock_id,
            shared=shared,
            token=int(token),
            pid=int(pid),
            host=host,
            since=int(since) / 1000 + offset,
            expires_at=expires_at,
        )
    except ValueError:
        return Holder(name=name, lock_id=lock_id, shared=shared, expires_at=expires_at)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisBackend(Backend):
    """Leases in one Redis or Valkey server (not a cluster), with fencing tokens and pub/sub wake-ups.

    Build it with ``Locker("redis://host:6379/0")`` (also ``rediss://``,
    ``valkey://``, ``valkeys://`` and ``unix:///path/redis.sock``) or
    ``Locker(client)`` for a ``redis.Redis`` client, or any client
    with its interface, that the caller made. Options: ``ttl`` (lease seconds,
    default 30), ``namespace`` (key prefix, default "kannuki"), and for URLs
    ``socket_timeout`` / ``connect_timeout`` (seconds, default 5; an
    unreachable server is a BackendError after them).
    """

    scheme = "redis"
    supports_shared = True
    supports_ttl = True

    def __init__(
        self,
        client: Any,
        *,
        ttl: float = DEFAULT_TTL,
        namespace: str = DEFAULT_NAMESPACE,
        url: str = "",
        connect: Callable[[], Any] | None = None,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace must be a non-empty str, not {namespace!r}")
        self.client = client
        self.ttl = self._default_ttl = check_ttl(ttl, "redis")
        self.namespace = namespace
        self._url = url
        # Makes a new client for this backend's URL; None for a client the caller owns (never closed here).
        self._connect = connect
        self._parents_clients: list[Any] = []
        self._lock_prefix = f"{namespace}:lock:"
        self._readers_prefix = f"{namespace}:readers:"
        self._counter_prefix = f"{namespace}:token:"
        self._writers_prefix = f"{namespace}:writers:"
        self._channel_prefix = f"{namespace}:released:"
        # The hot path sends bytes, which the client passes on as they are (no encoding per argument).
        self._lock_key, self._readers_key, self._counter_key, self._writers_key, self._channel_key = (
            prefix.encode()
            for prefix in (
                self._lock_prefix,
                self._readers_prefix,
                self._counter_prefix,
                self._writers_prefix,
                self._channel_prefix,
            )
        )
        self._holder = _holder_args()
        self._errors = _driver_errors(client)
        self._pubsub = callable(getattr(client, "pubsub", None))
        # Waiters of this process queue here (by full name); the first of them waits on Redis.
        self._table = LockTable()

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        """``redis://[user:password@]host[:port][/db]``, ``rediss://``, ``valkey://``, ``valkeys://``, ``unix:///path?db=N``."""
        driver = _driver()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        ttl = check_ttl(options.pop("ttl", DEFAULT_TTL), "redis")
        namespace = options.pop("namespace", DEFAULT_NAMESPACE)
        socket_timeout = _positive_seconds(
            options.pop("socket_timeout", DEFAULT_SOCKET_TIMEOUT), "socket_timeout"
        )
        connect_timeout = _positive_seconds(
            options.pop("connect_timeout", DEFAULT_CONNECT_TIMEOUT), "connect_timeout"
        )
        reject_unknown_options("redis", options)
        scheme = urlsplit(url).scheme.lower()
        target = URL_ALIASES[scheme] + url[len(scheme) :] if scheme in URL_ALIASES else url

        handshake = _handshake_within(connect_timeout)

        def connect() -> Any:
            # No automatic retry: a retried acquire would find its own lease (the script answers it
            # with its token), but a retried release or renew could report a loss that was not one.
            return driver.Redis.from_url(
                target,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 0),
                redis_connect_func=handshake,
            )

        try:
            client = connect()
        except ValueError as exc:
            raise ConfigurationError(f"bad redis url {_redact(url)!r}: {exc}") from None
        return cls(client, ttl=ttl, namespace=namespace, url=url, connect=connect)

    @classmethod
    def wraps(cls, obj: Any) -> bool:
        """A client with redis-py's interface: ``redis.Redis``, valkey's, a fake ... (duck-typed)."""
        if not _looks_like_client(obj):
            return False
        return not _is_async_client(obj)

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> RedisBackend:
        """Drive a ``redis.Redis`` client the caller made (its own timeouts and retries apply; never closed here)."""
        if not cls.wraps(obj):
            raise ConfigurationError(
                f"url: a {type(obj).__qualname__} from {type(obj).__module__} is not supported; "
                "pass a redis.Redis client (one server, not a cluster)"
            )
        ttl = options.pop("ttl", DEFAULT_TTL)
        namespace = options.pop("namespace", DEFAULT_NAMESPACE)
        reject_unknown_options("redis", options)
        return cls(obj, ttl=ttl, namespace=namespace)

    # -- locking ------------------------------------------------------------

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
    ) -> Grant | None:
        if transaction is not None and transaction is not False:
            raise NotSupportedError("the redis backend has no transactions; drop transaction=")
        lease = self._default_ttl if ttl is None else ttl
        key = name.encode()
        keys = [
            self._lock_key + key,
            self._readers_key + key,
            self._counter_key + key,
            self._writers_key + key,
        ]
        owner = os.urandom(8).hex().encode()
        pid, host = self._holder
        args = [b"1" if shared else b"0", b"%d" % max(1, int(lease * 1000)), owner, pid, host, b"0", _INTENT]
        deadline = None if timeout is None or timeout == 0 else time.monotonic() + timeout
        grant, _wait_ms = self._try(name, lock_id, shared, keys, args, lease)
        if grant is not None or timeout == 0:
            return grant
        on_wait()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        gate = table_acquire(self._table, name, shared, remaining, None)
        if not gate:
            return None
        grant = None
        try:
            if not shared:
                args[5] = b"1"  # a writer that waits: its tries mark its intent
            grant = self._wait(name, lock_id, shared, keys, args, lease, deadline)
            return grant
        finally:
            try:
                if grant is None and not shared:
                    finish(self._withdraw(name, owner))
            finally:
                table_release(self._table, name, gate)

    def _withdraw(self, name: str, owner: bytes) -> bool:
        """A waiting writer gives up: remove its mark (readers kept out by it are woken); never raises. Removed?"""
        keys = [self._writers_prefix + name, self._channel_prefix + name]
        try:
            return bool(self._eval(WITHDRAW, keys, [owner], name))
        except Exception:  # the store is down: the mark runs out by itself
            return False

    def _try(
        self, name: str, lock_id: int, shared: bool, keys: list[bytes], args: list[Any], lease: float
    ) -> tuple[Grant | None, int]:
        """One acquire script: (grant, 0), or (None, ms until the blocking lease ends; -1: unknown).

        The script runs to its end even if the task is cancelled meanwhile;
        when its reply was lost to an interruption or a broken connection, its
        lease (if it took one) is deleted again by owner value before the
        error goes on.
        """
        try:
            token, wait_ms = finish(self._eval(ACQUIRE, keys, args, name))
        except BaseException as exc:
            if _reply_lost(exc):
                finish(self._delete(name, args[2], shared))
            raise
        if not token:
            return None, int(wait_ms)
        return Grant(name, lock_id, shared, int(token), ttl=lease, data=args[2]), 0

    def _wait(
        self,
        name: str,
        lock_id: int,
        shared: bool,
        keys: list[bytes],
        args: list[Any],
        lease: float,
        deadline: float | None,
    ) -> Grant | None:
        """Try again until ``deadline``: woken by a release, or at the latest when the holder's lease ends."""
        backoff = Backoff("exponential", WAIT_FIRST, WAIT_CAP, "full")
        pubsub = self.client.pubsub(ignore_subscribe_messages=True) if self._pubsub else None
        try:
            if pubsub is not None:
                try:
                    pubsub.subscribe(self._channel_prefix + name)
                except self._errors as exc:
                    raise BackendError(f"redis failed while waiting for {name!r}: {exc}", key=name) from exc
            while True:
                # Subscribed before this try, so a release after it cannot go unnoticed.
                grant, wait_ms = self._try(name, lock_id, shared, keys, args, lease)
                if grant is not None:
                    return grant
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                delay = backoff.next_delay(remaining)
                if wait_ms >= 0:  # never sleep past the holder's lease
                    delay = min(delay, wait_ms / 1000 + 0.001)
                if pubsub is None:
                    sleep(delay)
                    continue
                try:
                    pubsub.get_message(timeout=delay)
                except self._errors as exc:
                    raise BackendError(f"redis failed while waiting for {name!r}: {exc}", key=name) from exc
        finally:
            if pubsub is not None:
                finish(self._close_quietly(pubsub))

    def release(self, grant: Grant) -> None:
        key = grant.name.encode()
        keys = [self._lock_key + key, self._readers_key + key, self._channel_key + key]
        args = [grant.data, b"1" if grant.shared else b"0"]
        if not finish(self._eval(RELEASE, keys, args, grant.name)):
            raise LockLostError(
                f"the lock {grant.name!r} (token {grant.token}) was lost before release: its lease expired "
                "or was deleted, and another holder may have taken it",
                key=grant.name,
            )

    def abort(self, grant: Grant) -> None:
        finish(self._delete(grant.name, grant.data, grant.shared))

    def _delete(self, name: str, owner: bytes, shared: bool) -> bool:
        """Compare-and-delete by owner value, never raising: the undo of an acquire, or an abort. Deleted?"""
        keys = [self._lock_prefix + name, self._readers_prefix + name, self._channel_prefix + name]
        try:
            return bool(self._eval(RELEASE, keys, [owner, "1" if shared else "0"], name))
        except Exception:  # the store is down or the key is not ours: the lease runs out on its own
            return False

    def renew(self, grant: Grant, ttl: float | None = None) -> bool:
        lease = grant.ttl if ttl is None else ttl
        ttl_ms = max(1, int((self._default_ttl if lease is None else lease) * 1000))
        keys = [self._lock_prefix + grant.name, self._readers_prefix + grant.name]
        return bool(self._eval(RENEW, keys, [grant.data, "1" if grant.shared else "0", ttl_ms], grant.name))

    def check(self, grant: Grant) -> bool:
        keys = [self._lock_prefix + grant.name, self._readers_prefix + grant.name]
        return bool(self._eval(CHECK, keys, [grant.data, "1" if grant.shared else "0"], grant.name))

    def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        """Delete the lock's records whoever holds them (leases: nothing to terminate); how many holders were freed."""
        keys = [self._lock_prefix + name, self._readers_prefix + name, self._channel_prefix + name]
        return int(self._eval(FORCE, keys, [], name))

    def _eval(self, script: _Script, keys: Sequence[str | bytes], args: list[Any], name: str) -> Any:
        client = self.client
        try:
            try:
                return client.evalsha(script.sha, len(keys), *keys, *args)
            except self._errors as exc:
                if not _is_noscript(exc):
                    raise
            # First use on this server (or after SCRIPT FLUSH): EVAL runs it and caches it for EVALSHA.
            return client.eval(script.text, len(keys), *keys, *args)
        except self._errors as exc:
            raise BackendError(
                f"redis at {self.describe()} failed on the lock {name!r}: {exc}", key=name
            ) from exc

    def _close_quietly(self, thing: Any) -> bool:
        """Close a client or subscription; False when that failed (a broken connection is gone either way)."""
        try:
            thing.close()
        except self._errors:  # must not mask the outcome of what the caller did
            return False
        return True

    # -- inspection ---------------------------------------------------------

    def held(self, name: str, lock_id: int) -> bool:
        return bool(self.holders(name, lock_id))

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        reply = self._eval(INSPECT, [self._lock_prefix + name, self._readers_prefix + name], [], name)
        now_ms, value, pttl = int(reply[0]), reply[1], int(reply[2])
        offset = time.time() - now_ms / 1000  # server clock -> this host's clock
        out = []
        if value:
            out.append(
                _holder(name, lock_id, False, _text(value), now_ms + pttl if pttl >= 0 else None, offset)
            )
        for entry in reply[3:]:
            parts = _text(entry).split("|", 2)  # owner, expires_ms, "token|pid|since_ms|host"
            expires_ms = int(parts[1])  # the script sent only entries that start with a number
            out.append(_holder(name, lock_id, True, "|".join(parts[:1] + parts[2:]), expires_ms, offset))
        return out

    def list_held(self) -> list[Holder]:
        """Holders of every lock in the namespace (by SCAN, which never blocks the server; bounded)."""
        names: set[str] = set()
        try:
            for prefix in (self._lock_prefix, self._readers_prefix):
                for key in self.client.scan_iter(match=_glob_escape(prefix) + "*", count=500):
                    names.add(_text(key)[len(prefix) :])
                    if len(names) >= LIST_HELD_LIMIT:
                        break
        except self._errors as exc:
            raise BackendError(f"redis at {self.describe()} failed: {exc}") from exc
        out: list[Holder] = []
        for name in sorted(names):
            out.extend(self.holders(name, compute_lock_id(name)))
        return out

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        if self._connect is not None:  # a client the caller passed in stays open: it is theirs
            self._close_quietly(self.client)

    def hand_off(self, grant: Grant) -> bool:
        # A lease is a key holding the owner value (grant.data): any client can renew or delete it.
        return True

    def after_fork_in_child(self) -> None:
        # The parent's leases are not ours and its sockets must not be shared: forget them, never close.
        self._table.reset_after_fork()
        self._holder = _holder_args()  # this process's pid
        if self._connect is not None:
            # Kept, not dropped: collecting the parent's client here would close its sockets.
            self._parents_clients.append(self.client)
            self.client = self._connect()
            return
        reset = getattr(getattr(self.client, "connection_pool", None), "reset", None)
        if callable(reset):
            try:
                reset()
            except Exception:  # a pool we cannot reset reconnects by itself (redis-py checks the pid)
                pass

    def describe(self) -> str:
        if not self._url:
            kwargs = getattr(getattr(self.client, "connection_pool", None), "connection_kwargs", {})
            where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            return f"redis://{where}/{kwargs.get('db', 0)}"
        return _redact(self._url)
