"""``redis://``: leases in Redis, driven by redis-py.

Every acquisition is a lease: a key that expires unless renewed (the locker's
renewal thread extends it every ttl/3). Each change is one server-side Lua
script, so it is one round trip and atomic:

- acquire: ``INCR`` the key's token counter and ``SET ... PX ttl`` the lock
  key, only when no one holds it (exclusive) or no writer holds it (shared);
- release: compare-and-delete by fencing token, then ``PUBLISH`` so waiters
  wake at once instead of polling;
- renew: compare-and-extend by fencing token.

Keys, under the ``namespace`` (default ``kannuki``) and the full lock name::

    {namespace}:lock:{name}      exclusive holder: "token|pid|since_ms|host", expires
    {namespace}:readers:{name}   shared holders: hash token -> "expires_ms|pid|since_ms|host"
    {namespace}:token:{name}     the fencing-token counter (kept, so tokens only grow)
    {namespace}:released:{name}  the pub/sub channel a release publishes on

Times in scripts come from the server's clock (``TIME``), so clients with
skewed clocks agree on who expired. Threads of one process queue on an
in-process lock table first, so one thread per key per process talks to Redis.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from kannuki import _core
from kannuki.backends.base import NO_WAIT_CALLBACK, Backend, Holder, reject_unknown_options
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["RedisBackend"]

DEFAULT_TTL = 30.0
DEFAULT_NAMESPACE = "kannuki"
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 5.0
# list_held stops after this many locks: it is a diagnostic, not a full export.
LIST_HELD_LIMIT = 10_000

# The server's clock in milliseconds. replicate_commands() lets Redis < 5 write after TIME.
_NOW = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Drop expired shared holders; return how many are left and the ms until the first one expires.
_PURGE_READERS = """
local function live_readers(key, now)
  local fields = redis.call('HGETALL', key)
  local live, soonest = 0, -1
  for i = 1, #fields, 2 do
    local expires = tonumber(string.match(fields[i + 1], '^(%d+)'))
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

# KEYS: lock, readers, counter. ARGV: shared ("1"/"0"), ttl_ms, pid, host.
# Returns {token, 0} when acquired, else {0, ms until the blocking holder's lease ends (-1: unknown)}.
_ACQUIRE = (
    _NOW
    + _PURGE_READERS
    + """
local ttl = tonumber(ARGV[2])
local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 then return {0, pttl} end
if ARGV[1] == '1' then
  live_readers(KEYS[2], now)
  local token = redis.call('INCR', KEYS[3])
  redis.call('HSET', KEYS[2], token, (now + ttl) .. '|' .. ARGV[3] .. '|' .. now .. '|' .. ARGV[4])
  if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
  return {token, 0}
end
local live, soonest = live_readers(KEYS[2], now)
if live > 0 then return {0, soonest} end
local token = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[3] .. '|' .. now .. '|' .. ARGV[4], 'PX', ttl)
return {token, 0}
"""
)

# KEYS: lock, readers, channel. ARGV: token. Returns 1 when released, 0 when the token no longer held.
_RELEASE = (
    _NOW
    + """
local prefix = ARGV[1] .. '|'
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #prefix) == prefix then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[3], '1')
  return 1
end
local reader = redis.call('HGET', KEYS[2], ARGV[1])
if not reader then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HLEN', KEYS[2]) == 0 then redis.call('PUBLISH', KEYS[3], '1') end
if tonumber(string.match(reader, '^(%d+)')) <= now then return 0 end
return 1
"""
)

# KEYS: lock, readers. ARGV: token, ttl_ms. Returns 1 when extended, 0 when the token no longer held.
_RENEW = (
    _NOW
    + """
local prefix = ARGV[1] .. '|'
local ttl = tonumber(ARGV[2])
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, #prefix) == prefix then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return 1
end
local reader = redis.call('HGET', KEYS[2], ARGV[1])
if not reader then return 0 end
local expires, rest = string.match(reader, '^(%d+)(|.*)$')
if tonumber(expires) <= now then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[2], ARGV[1], (now + ttl) .. rest)
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""
)

# KEYS: lock, readers. Returns {now_ms, exclusive value or false, its pttl, reader values...}.
_INSPECT = (
    _NOW
    + """
local out = {now, redis.call('GET', KEYS[1]) or false, redis.call('PTTL', KEYS[1])}
local fields = redis.call('HGETALL', KEYS[2])
for i = 2, #fields, 2 do
  local expires = tonumber(string.match(fields[i], '^(%d+)'))
  if expires > now then out[#out + 1] = fields[i - 1] .. '|' .. fields[i] end
end
return out
"""
)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters, so a namespace is taken literally."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


def _positive_seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _import_redis() -> Any:
    try:
        import redis
    except ModuleNotFoundError:
        raise ConfigurationError("the redis backend needs redis-py: pip install kannuki[redis]") from None
    return redis


class RedisBackend(Backend):
    """Leases in one Redis server (not Redis Cluster), with fencing tokens and pub/sub wake-ups.

    Build it with ``Locker("redis://host:6379/0")`` (also ``rediss://`` and
    ``unix:///path/redis.sock``) or ``Locker(redis.Redis(...))``. Options:
    ``ttl`` (lease seconds, default 30), ``namespace`` (key prefix, default
    "kannuki"), and for URLs ``socket_timeout`` / ``connect_timeout``
    (seconds, default 5; an unreachable server is a BackendError after them).
    """

    scheme = "redis"
    supports_shared = True
    supports_ttl = True
    # Lease losses are found and reported by the locker's renewal thread.
    reports_loss = True

    def __init__(
        self, client: Any, *, ttl: float = DEFAULT_TTL, namespace: str = DEFAULT_NAMESPACE, url: str = ""
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace must be a non-empty str, not {namespace!r}")
        self.client = client
        self.ttl = _positive_seconds(ttl, "ttl")
        self.namespace = namespace
        self._url = url
        self._lock_prefix = f"{namespace}:lock:"
        self._readers_prefix = f"{namespace}:readers:"
        self._counter_prefix = f"{namespace}:token:"
        self._channel_prefix = f"{namespace}:released:"
        self._acquire_script = client.register_script(_ACQUIRE)
        self._release_script = client.register_script(_RELEASE)
        self._renew_script = client.register_script(_RENEW)
        self._inspect_script = client.register_script(_INSPECT)
        self._redis_error: type[BaseException] = _import_redis().RedisError
        self._host = socket.gethostname()
        # Threads of this process queue here (by lock ID) before one of them asks Redis.
        self._table = _core.LockTable()
        # (name, token) -> (local table token, lease ms): what this process holds.
        self._held: dict[tuple[str, int], tuple[int, int]] = {}

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisBackend:
        """``redis://[user:password@]host[:port][/db]``, ``rediss://...`` or ``unix:///path?db=N``."""
        redis = _import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        ttl = options.pop("ttl", DEFAULT_TTL)
        namespace = options.pop("namespace", DEFAULT_NAMESPACE)
        socket_timeout = _positive_seconds(
            options.pop("socket_timeout", DEFAULT_SOCKET_TIMEOUT), "socket_timeout"
        )
        connect_timeout = _positive_seconds(
            options.pop("connect_timeout", DEFAULT_CONNECT_TIMEOUT), "connect_timeout"
        )
        reject_unknown_options("redis", options)
        try:
            # No automatic retry: re-running an acquire whose reply was lost would wait on our own lease.
            client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ConfigurationError(f"bad redis url {cls._redact(url)!r}: {exc}") from None
        return cls(client, ttl=ttl, namespace=namespace, url=url)

    @classmethod
    def wraps(cls, obj: Any) -> bool:
        module = type(obj).__module__
        return (module == "redis" or module.startswith("redis.")) and hasattr(obj, "register_script")

    @classmethod
    def from_connection(cls, obj: Any, **options: Any) -> RedisBackend:
        """Drive a ``redis.Redis`` client the caller made (its own timeouts and retries apply)."""
        module = type(obj).__module__
        if module.startswith(("redis.asyncio", "redis.cluster")):
            raise ConfigurationError(
                f"url: a {type(obj).__qualname__} from {module} is not supported; pass a redis.Redis client"
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
    ) -> int:
        if transaction is not None:
            raise NotSupportedError("the redis backend has no transactions; drop transaction=")
        ttl_ms = max(1, int((self.ttl if ttl is None else ttl) * 1000))
        deadline = None if timeout is None else time.monotonic() + timeout
        local = self._table.acquire(lock_id, shared, 0.0)
        waited = False
        if not local:
            if timeout == 0:
                return 0
            on_wait()
            waited = True
            local = self._table.acquire(
                lock_id, shared, timeout if deadline is None else max(0.0, deadline - time.monotonic())
            )
            if not local:
                return 0
        try:
            keys = [self._lock_prefix + name, self._readers_prefix + name, self._counter_prefix + name]
            args = ["1" if shared else "0", ttl_ms, os.getpid(), self._host]
            token, wait_ms = self._call(self._acquire_script, keys, args)
            if not token and timeout != 0:
                token = self._wait(
                    name, keys, args, deadline, int(wait_ms), NO_WAIT_CALLBACK if waited else on_wait
                )
        except BaseException:
            self._table.release(lock_id, local)
            raise
        if not token:
            self._table.release(lock_id, local)
            return 0
        self._held[name, int(token)] = (local, ttl_ms)
        return int(token)

    def _wait(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        deadline: float | None,
        wait_ms: int,
        on_wait: Callable[[], None],
    ) -> int:
        """Try again until ``deadline``: woken by a release, or at the latest when the holder's lease ends."""
        on_wait()
        backoff = _core.Backoff("exponential", 0.01, 1.0, "full")
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            try:
                pubsub.subscribe(self._channel_prefix + name)
            except self._redis_error as exc:
                raise BackendError(f"redis failed while waiting for {name!r}: {exc}", key=name) from exc
            while True:
                # Subscribed before this try, so a release after it cannot go unnoticed.
                token, wait_ms = self._call(self._acquire_script, keys, args)
                if token:
                    return int(token)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return 0
                delay = backoff.next_delay(remaining)
                if wait_ms >= 0:  # never sleep past the holder's lease
                    delay = min(delay, wait_ms / 1000 + 0.001)
                try:
                    pubsub.get_message(timeout=delay)
                except self._redis_error as exc:
                    raise BackendError(f"redis failed while waiting for {name!r}: {exc}", key=name) from exc
        finally:
            try:
                pubsub.close()
            except (self._redis_error, OSError):  # a broken subscription must not mask the outcome
                pass

    def release(self, name: str, lock_id: int, token: int) -> None:
        held = self._held.pop((name, token), None)
        try:
            released = self._call(
                self._release_script,
                [self._lock_prefix + name, self._readers_prefix + name, self._channel_prefix + name],
                [token],
            )
        finally:
            if held is not None:
                self._table.release(lock_id, held[0])
        if not released:
            raise LockLostError(
                f"the lock {name!r} (token {token}) was lost before release: its lease expired "
                "and another holder may have taken it",
                key=name,
            )

    def renew(self, name: str, lock_id: int, token: int, ttl: float | None = None) -> bool:
        held = self._held.get((name, token))
        if ttl is not None:
            ttl_ms = max(1, int(ttl * 1000))
        else:
            ttl_ms = held[1] if held is not None else max(1, int(self.ttl * 1000))
        renewed = self._call(
            self._renew_script, [self._lock_prefix + name, self._readers_prefix + name], [token, ttl_ms]
        )
        if renewed:
            return True
        # Lost: let the next thread of this process try for it now.
        held = self._held.pop((name, token), None)
        if held is not None:
            self._table.release(lock_id, held[0])
        return False

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return script(keys=keys, args=args)
        except self._redis_error as exc:
            raise BackendError(f"redis at {self.describe()} failed: {exc}", key=keys[0]) from exc

    # -- inspection ---------------------------------------------------------

    def held(self, name: str, lock_id: int) -> bool:
        return bool(self.holders(name, lock_id))

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        reply = self._call(self._inspect_script, [self._lock_prefix + name, self._readers_prefix + name], [])
        now_ms, value, pttl = int(reply[0]), reply[1], int(reply[2])
        offset = time.time() - now_ms / 1000  # server clock -> this host's clock
        out = []
        if value:
            out.append(
                self._holder(name, lock_id, False, _text(value), now_ms + pttl if pttl >= 0 else None, offset)
            )
        for entry in reply[3:]:
            token, expires, record = _text(entry).split("|", 2)
            out.append(self._holder(name, lock_id, True, f"{token}|{record}", int(expires), offset))
        return out

    @staticmethod
    def _holder(
        name: str, lock_id: int, shared: bool, record: str, expires_ms: int | None, offset: float
    ) -> Holder:
        """Parse "token|pid|since_ms|host"; a value kannuki did not write still counts as a holder."""
        expires_at = None if expires_ms is None else expires_ms / 1000 + offset
        try:
            token, pid, since, host = record.split("|", 3)
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

    def list_held(self) -> list[Holder]:
        """Holders of every lock in the namespace (by SCAN, which never blocks the server; bounded)."""
        names: set[str] = set()
        try:
            for prefix in (self._lock_prefix, self._readers_prefix):
                for key in self.client.scan_iter(match=_glob_escape(prefix) + "*", count=500):
                    names.add(_text(key)[len(prefix) :])
                    if len(names) >= LIST_HELD_LIMIT:
                        break
        except self._redis_error as exc:
            raise BackendError(f"redis at {self.describe()} failed: {exc}") from exc
        out: list[Holder] = []
        for name in sorted(names):
            out.extend(self.holders(name, _core.lock_id(name)))
        return out

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        self._held.clear()
        try:
            self.client.close()
        except (self._redis_error, OSError):  # best effort: the leases expire on their own
            pass

    def after_fork_in_child(self) -> None:
        # redis-py pools notice the new pid and reconnect; the parent's leases are not ours.
        self._held.clear()
        self._table.reset_after_fork()

    def describe(self) -> str:
        if not self._url:
            kwargs = getattr(getattr(self.client, "connection_pool", None), "connection_kwargs", {})
            where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            return f"redis://{where}/{kwargs.get('db', 0)}"
        return self._redact(self._url)

    @staticmethod
    def _redact(url: str) -> str:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[-1]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + netloc))
