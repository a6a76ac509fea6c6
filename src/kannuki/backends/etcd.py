# WARNING: generated from src/kannuki/backends/etcd_async.py by tools/async_to_sync.py.
# Do not edit: change the async source and run `python tools/async_to_sync.py`.
"""``etcd://``: locks in an etcd v3 cluster, kept while any majority of its members lives (async source; ``etcd.py`` is generated).

kannuki talks to etcd's v3 JSON gateway (``/v3/kv/txn``, ``/v3/kv/range``,
``/v3/lease/*``, ``/v3/watch``, ``/v3/auth/authenticate``) over HTTP/1.1 itself,
with the standard library only: no grpc, no client package. The sync twin runs
on blocking sockets and the async one on asyncio streams, so the event loop
never waits for a member. Every request has a deadline, and a call fails over
between the members the URL names (comma-separated).

The lock is etcd's own concurrency recipe, with shared holders added:

- Every acquisition grants its own lease, under an ID kannuki picks (so a grant
  or a put whose reply was lost can still be undone by revoking that ID: etcd
  deletes the lease's keys with it), and puts one key under it::

      {namespace}/lock/{name}/w/{lease id}   a writer (exclusive)
      {namespace}/lock/{name}/r/{lease id}   a reader (shared)

  (``%`` and ``/`` in the name are written ``%25`` and ``%2F``). Its value is the
  holder record: pid, host, application and since, as JSON.
- A try is one transaction: put the key only if there is no key at all under
  the lock (a writer) or no writer key (a reader): a compare on create
  revision 0 over the range.
- A waiter puts its key unconditionally, so the keys queue in the order of their
  create revisions. A writer waits for the key just before it, a reader for the
  writer just before it, by watching that one key for its deletion (no polling,
  no thundering herd), then looks again; it holds once nothing is before it.
  While it waits it keeps its own lease alive.
- The fencing token is the key's create revision, which the put's reply
  carries: unique in the whole cluster and increasing in the order holders get
  the lock.
- The hold owner renews every ttl/3 (a keep-alive, then a read of the key: a
  lease revoked or a key deleted is a loss). Release is a delete guarded by our
  create revision, then the lease is revoked. A holder paused past its lease
  finds its key gone (etcd deleted it with the lease) and can delete nothing of
  the next holder's.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import math
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from kannuki._compat import Mutex, finish, sleep
from kannuki._core import lock_id as compute_lock_id
from kannuki.backends._lease import DEFAULT_TTL, HOST, check_ttl
from kannuki.backends._types import NO_WAIT_CALLBACK, Grant, Holder, reject_unknown_options
from kannuki.backends.base import Backend
from kannuki.errors import BackendError, ConfigurationError, LockLostError, NotSupportedError

__all__ = ["EtcdBackend"]

DEFAULT_PORT = 2379
DEFAULT_NAMESPACE = "kannuki"
DEFAULT_APPLICATION = "kannuki"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 5.0
# A renewal, an undo or a release gets at least this long to reach a member, even when the lease it
# tends is about to run out.
MIN_BUDGET = 0.5
# Between rounds over the members while they answer "unavailable" (an election, a lost quorum):
# 50 ms doubling to 500 ms.
PAUSE_FIRST = 0.05
PAUSE_CAP = 0.5
# Keys read per lock for holders() / waiters() / force_release(), and in all by list_held():
# these are diagnostics, not exports.
QUEUE_LIMIT = 10_000
LIST_HELD_LIMIT = 10_000
READ_SIZE = 65536
MAX_LINE = 65536
MAX_BODY = 64 << 20
AUTH_PATH = "/v3/auth/authenticate"
# What a watch slice ends with.
WATCH_DELETED, WATCH_TIMEOUT, WATCH_FAILED = 1, 2, 3

# gRPC status codes in the gateway's error replies.
CODE_INVALID_ARGUMENT = 3
CODE_DEADLINE_EXCEEDED = 4
CODE_NOT_FOUND = 5
CODE_PERMISSION_DENIED = 7
CODE_RESOURCE_EXHAUSTED = 8
CODE_FAILED_PRECONDITION = 9
CODE_UNAVAILABLE = 14
CODE_UNAUTHENTICATED = 16
RETRYABLE_CODES = frozenset({CODE_DEADLINE_EXCEEDED, CODE_RESOURCE_EXHAUSTED, CODE_UNAVAILABLE})
# Of those answers, the ones given before the request was proposed to the cluster: nothing was
# applied, so even a release may try again. Any other failure may have been applied.
NOT_APPLIED = ("no leader", "not capable", "too many requests", "unhealthy cluster")

# Options a URL's query may carry (as text), and how to read them; the same names are keyword options.
URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ttl": float,
    "namespace": str,
    "connect_timeout": float,
    "request_timeout": float,
    "user": str,
    "password": str,
    "ca_cert": str,
    "cert_cert": str,
    "cert_key": str,
    "application_name": str,
}


class _BadResponse(OSError):
    """The member's answer is not HTTP/1.1 as etcd's gateway speaks it (not etcd, or cut short)."""


class _Unreached(Exception):
    """No connection to the member could be made: nothing was sent."""


class _Unanswered(Exception):
    """The request went out but no full answer came back: it may have been applied."""


class _Refused(BackendError):
    """A member answered the request with an error (``code`` is the gRPC status, ``detail`` its message)."""

    def __init__(self, message: str, *, code: int | None, detail: str, status: int, key: str | None) -> None:
        super().__init__(message, key=key)
        self.code = code
        self.detail = detail
        self.status = status


def _remaining(deadline: float) -> float:
    """Seconds left until ``deadline``; TimeoutError when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text) if text else b""


def _prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\x00"


def _name_part(name: str) -> str:
    """The full lock name as one path segment of a key: ``%`` and ``/`` escaped, nothing else."""
    return name.replace("%", "%25").replace("/", "%2F")


def _new_lease_id() -> int:
    """A random positive 63-bit lease ID (never 0: etcd would pick one itself)."""
    return secrets.randbits(63) or 1


def _lease_seconds(ttl: float) -> int:
    """etcd leases are whole seconds: the next one up, at least 1."""
    return max(1, math.ceil(ttl))


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < float("inf")):
        raise ConfigurationError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _parse_members(netloc: str, url: str) -> list[tuple[str, int]]:
    """``h1:2379,[::1]:2379,h3`` -> [(host, port)...]; ConfigurationError naming the bad part."""
    members = []
    for raw in netloc.split(","):
        item = raw.strip()
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ConfigurationError(f"bad member {item!r} in etcd url {url!r}")
            port_text = rest[1:]
        elif item.count(":") > 1:  # an IPv6 address without brackets: no port
            try:
                host, port_text = str(ipaddress.ip_address(item)), ""
            except ValueError:
                raise ConfigurationError(f"bad member {item!r} in etcd url {url!r}") from None
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ConfigurationError(f"etcd url {url!r} needs a host for every member, as host:port")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ConfigurationError(f"bad port {port_text!r} in etcd url {url!r}")
            port = int(port_text)
        else:
            port = DEFAULT_PORT
        members.append((host, port))
    return members


def _ssl_context(
    context: Any, ca_cert: str | None, cert_cert: str | None, cert_key: str | None
) -> ssl.SSLContext:
    """The TLS context for etcds://: the caller's, or one that trusts ``ca_cert`` (else the system's CAs)."""
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise ConfigurationError(
                f"ssl_context must be an ssl.SSLContext, not {type(context).__qualname__}"
            )
        if ca_cert or cert_cert or cert_key:
            raise ConfigurationError("give either ssl_context or ca_cert / cert_cert / cert_key, not both")
        return context
    if bool(cert_cert) != bool(cert_key):
        raise ConfigurationError("cert_cert and cert_key go together: the client certificate and its key")
    try:
        made = ssl.create_default_context(cafile=ca_cert or None)
        if cert_cert and cert_key:
            made.load_cert_chain(cert_cert, cert_key)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"etcd TLS options: {exc}") from None
    return made


class _Member:
    """One cluster member the URL names, with its idle keep-alive connections."""

    __slots__ = ("host", "host_header", "idle", "label", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.host_header = self.label.encode("idna")
        except UnicodeError:
            raise ConfigurationError(f"bad etcd host {host!r}") from None
        self.idle: list[_Connection] = []


class _Socket:
    """A blocking TCP (or TLS) connection with a timeout per call.

    The sync half of this module's one primitive pair: the async source defines
    it beside its asyncio twin, so that a change to one is seen next to the
    other, and only the generated ``etcd.py`` uses it.
    """

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def open(cls, host: str, port: int, context: ssl.SSLContext | None, timeout: float) -> _Socket:
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:  # the handshake runs within the connect timeout set above
                sock = context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def send(self, data: bytes, timeout: float) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(READ_SIZE)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:  # closing a broken connection: it is gone either way
            pass


class _Connection:
    """One HTTP/1.1 connection to one member: requests in turn, answers read through our own buffer.

    A read that times out consumes nothing (partial data stays in the buffer and
    the position in a chunked body is kept), so a watch can wait in slices on
    one connection.
    """

    __slots__ = ("buffer", "chunk", "member", "received", "sock")

    def __init__(self, sock: _Socket, member: _Member) -> None:
        self.sock = sock
        self.member = member
        self.buffer = bytearray()
        self.chunk: int | None = None  # size of the chunk whose data is next; None: a size line is next
        self.received = 0

    def _fill(self, deadline: float) -> None:
        data = self.sock.recv(_remaining(deadline))
        if not data:
            if not self.received:  # not a byte of an answer: a member that crashed, or no etcd gateway
                raise ConnectionResetError(
                    f"{self.member.label} closed the connection without answering "
                    "(is it an etcd member? one that serves TLS needs etcds://)"
                )
            raise ConnectionResetError(f"{self.member.label} closed the connection")
        self.received += len(data)
        self.buffer += data

    def read_line(self, deadline: float) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if len(self.buffer) > MAX_LINE:
                raise _BadResponse(f"{self.member.label} sent a line longer than {MAX_LINE} bytes")
            self._fill(deadline)

    def read_exact(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self._fill(deadline)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def read_head(self, deadline: float) -> tuple[int, dict[str, str]]:
        """The status code and the headers (names in lower case)."""
        status_line = self.read_line(deadline)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _BadResponse(
                f"{self.member.label} does not answer as an etcd gateway: {status_line[:80]!r}"
            )
        headers: dict[str, str] = {}
        while True:
            line = self.read_line(deadline)
            if not line:
                return int(parts[1]), headers
            field, _, value = line.partition(b":")
            headers[field.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")

    def read_chunk(self, deadline: float) -> bytes | None:
        """The next chunk of a chunked body; None after the last one (its trailers read)."""
        if self.chunk is None:
            line = self.read_line(deadline)
            try:
                self.chunk = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadResponse(f"{self.member.label} sent a bad chunk size {line[:40]!r}") from None
        if self.chunk == 0:
            while self.read_line(deadline):  # trailers, up to the empty line
                pass
            self.chunk = None
            return None
        data = self.read_exact(self.chunk + 2, deadline)
        self.chunk = None
        return data[:-2]

    def read_body(self, headers: dict[str, str], deadline: float) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = bytearray()
            while True:
                chunk = self.read_chunk(deadline)
                if chunk is None:
                    return bytes(body)
                body += chunk
                if len(body) > MAX_BODY:
                    raise _BadResponse(f"{self.member.label} sent an answer over {MAX_BODY} bytes")
        length = headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > MAX_BODY:
            raise _BadResponse(f"{self.member.label} sent an answer without a usable length")
        return self.read_exact(int(length), deadline)

    def close(self) -> None:
        self.sock.close()


def _reply_of(status: int, raw: bytes) -> dict[str, Any]:
    """The JSON object of an answer (a stream's first message); a non-JSON answer as ``{"error": text}``."""
    first = raw.split(b"\n", 1)[0].strip()
    try:
        reply = json.loads(first) if first else {}
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        return {"error": raw[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"}
    error = reply.get("error")
    if isinstance(error, dict):  # an error inside a stream: {"error": {"grpc_code": ..., "message": ...}}
        reply = {"error": error.get("message", ""), "code": error.get("grpc_code", error.get("code"))}
    return reply


class _Lease:
    """What one acquisition owns in etcd: its lease and its key (the grant's ``data``)."""

    __slots__ = (
        "asked",
        "conflicts",
        "deadline",
        "dir",
        "id",
        "key",
        "key64",
        "refreshed",
        "revision",
        "shared",
        "ttl",
    )

    def __init__(self, lock_dir: bytes, shared: bool, asked: int) -> None:
        self.dir = lock_dir
        self.shared = shared
        # A writer waits behind every key of the lock, a reader behind the writers only.
        self.conflicts = lock_dir + b"w/" if shared else lock_dir
        self.asked = asked  # the lease length asked for (whole seconds)
        self.ttl = asked  # the lease length etcd granted (it may round up to its minimum)
        self.revision = 0  # the key's create revision: the fencing token
        self.deadline = 0.0  # monotonic time by which the lease has surely run out, as far as we know
        self.refreshed = 0.0  # monotonic time of the last grant or keep-alive sent
        self.id = 0
        self.key = b""
        self.key64 = ""
        self.new_identity()

    def new_identity(self) -> None:
        """A fresh lease ID and the key named after it (a first acquire, or a waiter queueing again)."""
        self.id = _new_lease_id()
        self.key = self.dir + (b"r/" if self.shared else b"w/") + f"{self.id:016x}".encode()
        self.key64 = _b64(self.key)


def _range(key: bytes, end: bytes | None = None, **fields: Any) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(key)}
    if end is not None:
        request["range_end"] = _b64(end)
    request.update(fields)
    return request


def _kvs(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The key-values of a range answer (or of one answer inside a transaction's)."""
    found = response.get("response_range", response).get("kvs")
    return found if isinstance(found, list) else []


def _is_reader(kv: dict[str, Any], lock_dir: bytes) -> bool:
    return _unb64(kv.get("key", "")).startswith(lock_dir + b"r/")


def _heads(kvs: list[dict[str, Any]], lock_dir: bytes) -> int:
    """How many keys at the head of a queue (sorted by create revision) hold the lock now."""
    count = 0
    for kv in kvs:
        if not _is_reader(kv, lock_dir):
            return count or 1
        count += 1
    return count


def _holder(name: str, lock_id: int, kv: dict[str, Any], shared: bool) -> Holder:
    """A key's holder record; a value kannuki did not write still counts, with what the key tells."""
    token = int(kv.get("create_revision", 0)) or None
    try:
        record = json.loads(_unb64(kv.get("value", "")))
        return Holder(
            name=name,
            lock_id=lock_id,
            shared=shared,
            token=token,
            pid=int(record["pid"]),
            host=str(record["host"]),
            application=str(record.get("app") or "") or None,
            since=float(record["since"]),
        )
    except (ValueError, KeyError, TypeError):
        return Holder(name=name, lock_id=lock_id, shared=shared, token=token)


class EtcdBackend(Backend):
    """Leases in an etcd v3 cluster, queued by create revision, woken by watches, fenced by revisions.

    Build it with ``Locker("etcd://h1:2379,h2:2379,h3:2379")`` (``etcds://``
    for TLS). Options, as keywords or in the URL's query: ``ttl`` (lease seconds,
    default 30; etcd rounds up to whole seconds and to its own minimum),
    ``namespace`` (key prefix, default "kannuki"), ``connect_timeout`` (seconds
    to find a reachable member, shared among the members, default 5),
    ``request_timeout`` (seconds a member has to answer one request, default 5;
    a call gives up after that per member), ``user`` / ``password`` (also as
    the URL's ``user:password@``), ``ca_cert``, ``cert_cert``, ``cert_key`` (file
    paths, etcds:// only) or ``ssl_context`` (keyword only), and
    ``application_name`` (written in the holder record, default "kannuki").
    """

    scheme = "etcd"
    supports_shared = True
    supports_ttl = True

    def __init__(
        self,
        members: Sequence[tuple[str, int]],
        *,
        ttl: float = DEFAULT_TTL,
        namespace: str = DEFAULT_NAMESPACE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        user: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        application_name: str = DEFAULT_APPLICATION,
    ) -> None:
        if not members:
            raise ConfigurationError("the etcd backend needs at least one member (host:port)")
        if not isinstance(namespace, str) or not namespace:
            raise ConfigurationError(f"namespace must be a non-empty str, not {namespace!r}")
        if not isinstance(application_name, str):
            raise ConfigurationError(f"application_name must be a str, not {application_name!r}")
        if (user is None) != (password is None):
            raise ConfigurationError("user and password go together (etcd authentication)")
        self.ttl = self._default_ttl = check_ttl(ttl, "etcd")
        self.namespace = namespace
        self.application_name = application_name
        self._members = [_Member(host, port) for host, port in members]
        self._current = 0  # the member calls go to first; moves on when one fails
        self._connect_timeout = _seconds(connect_timeout, "connect_timeout")
        self._request_timeout = _seconds(request_timeout, "request_timeout")
        self._ssl = ssl_context
        self._user = user
        self._password = password
        self._token: str | None = None  # the auth token; "" when the cluster has authentication off
        self._root = f"{namespace}/lock/".encode()
        self._mutex = Mutex()
        self._parents_connections: list[_Connection] = []
        self._url = ""  # the URL it was built from, password hidden (describe())

    # -- construction -------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **options: Any) -> EtcdBackend:
        """``etcd://[user:password@]host[:port][,host[:port]...][/][?option=value&...]``; ``etcds://`` for TLS."""
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise ConfigurationError(f"bad etcd url {url!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("etcd", "etcds"):
            raise ConfigurationError(f"etcd urls start with etcd:// or etcds://, not {url!r}")
        if parts.path not in ("", "/") or parts.fragment:
            raise ConfigurationError(
                f"etcd url {url!r} takes members and options only (etcd://h1:2379,h2:2379?ttl=10), no path"
            )
        userinfo, at, netloc = parts.netloc.rpartition("@")
        shown = cls._redact(url)
        members = _parse_members(netloc, shown)
        try:
            query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise ConfigurationError(f"bad query in etcd url {shown!r}") from None
        for option, text in query:
            reader = URL_OPTIONS.get(option)
            if reader is None:
                raise ConfigurationError(f"unknown option {option!r} in etcd url {shown!r}")
            if option in options:
                raise ConfigurationError(f"option {option!r} is given both in the url and as a keyword")
            try:
                options[option] = reader(text)
            except ValueError:
                raise ConfigurationError(f"bad value {text!r} for {option!r} in etcd url {shown!r}") from None
        if at:
            name, colon, secret = userinfo.partition(":")
            for option, value in (("user", unquote(name)), ("password", unquote(secret) if colon else None)):
                if value is not None:
                    if option in options:
                        raise ConfigurationError(
                            f"option {option!r} is given both in the url and as a keyword"
                        )
                    options[option] = value
        ttl = options.pop("ttl", DEFAULT_TTL)
        namespace = options.pop("namespace", DEFAULT_NAMESPACE)
        connect_timeout = options.pop("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        request_timeout = options.pop("request_timeout", DEFAULT_REQUEST_TIMEOUT)
        user = options.pop("user", None)
        password = options.pop("password", None)
        ca_cert = options.pop("ca_cert", None)
        cert_cert = options.pop("cert_cert", None)
        cert_key = options.pop("cert_key", None)
        context = options.pop("ssl_context", None)
        application_name = options.pop("application_name", DEFAULT_APPLICATION)
        reject_unknown_options("etcd", options)
        for option, value in (("user", user), ("password", password)):
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(f"{option} must be a str, not {type(value).__qualname__}")
        if scheme == "etcds":
            context = _ssl_context(context, ca_cert, cert_cert, cert_key)
        elif context is not None or ca_cert or cert_cert or cert_key:
            raise ConfigurationError(f"TLS options need an etcds:// url, not {shown!r}")
        backend = cls(
            members,
            ttl=ttl,
            namespace=namespace,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            user=user,
            password=password,
            ssl_context=context,
            application_name=application_name,
        )
        backend._url = shown
        return backend

    @staticmethod
    def _redact(url: str) -> str:
        scheme, sep, rest = url.partition("://")
        userinfo, at, netloc = rest.partition("?")[0].rpartition("@")
        if at and ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        return f"{scheme}{sep}{userinfo}{at}{netloc}"

    # -- the wire -----------------------------------------------------------

    def _budget(self) -> float:
        """How long one call may take by default: ``request_timeout`` per member."""
        return self._request_timeout * len(self._members)

    def _budget_until(self, deadline: float | None) -> float:
        """A call's budget inside an acquire that must end by ``deadline`` (plus the connect timeout at most)."""
        if deadline is None:
            return self._budget()
        return min(self._budget(), max(0.0, deadline - time.monotonic()) + self._connect_timeout)

    def _open(self, member: _Member, deadline: float, *, fresh: bool = False) -> tuple[_Connection, bool]:
        """An idle connection to ``member`` (reused: True), or a new one; _Unreached when none can be made."""
        with self._mutex:
            if member.idle and not fresh:
                return member.idle.pop(), True
        limit = min(self._connect_timeout / len(self._members), deadline - time.monotonic())
        if limit <= 0:
            raise _Unreached("no time left to connect")
        try:
            sock = _Socket.open(member.host, member.port, self._ssl, limit)
        except (OSError, ssl.CertificateError) as exc:
            raise _Unreached(str(exc) or type(exc).__name__) from exc
        return _Connection(sock, member), False

    def _head(self, member: _Member, path: str, length: int, extra: bytes = b"") -> bytes:
        auth = b"Authorization: " + self._token.encode() + b"\r\n" if self._token else b""
        return (
            b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + member.host_header
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(length).encode()
            + b"\r\n" + auth + extra + b"\r\n"
        )  # fmt: skip

    def _exchange(self, member: _Member, path: str, body: bytes, deadline: float) -> tuple[int, bytes]:
        """One request and its whole answer on one member: (status, body).

        Raises _Unreached when nothing was sent, _Unanswered when the request
        went out and no full answer came back. A kept-alive connection that the
        member had closed is replaced once, transparently.
        """
        for _ in range(2):
            conn, reused = self._open(member, deadline)
            sent = False
            try:
                conn.sock.send(self._head(member, path, len(body)) + body, _remaining(deadline))
                sent = True
                status, headers = conn.read_head(deadline)
                raw = conn.read_body(headers, deadline)
            except BaseException as exc:
                conn.close()
                if not isinstance(exc, OSError):
                    raise
                if reused and not conn.received and not isinstance(exc, TimeoutError):
                    continue  # the member had closed this idle connection: it never saw the request
                if not sent:
                    raise _Unreached(str(exc) or type(exc).__name__) from exc
                raise _Unanswered(str(exc) or type(exc).__name__) from exc
            if headers.get("connection", "").lower() == "close":
                conn.close()
            else:
                with self._mutex:
                    member.idle.append(conn)
            return status, raw
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(
        self,
        path: str,
        payload: dict[str, Any],
        *,
        budget: float | None = None,
        replay: bool = True,
        key: str | None = None,
    ) -> dict[str, Any]:
        """POST ``payload`` to the gateway, failing over between members within ``budget`` seconds.

        ``replay=False`` is for a request that must not be sent twice (a
        release): when its first try may have been applied, it raises
        BackendError instead of trying again. Members that answer "unavailable"
        (an election, a lost quorum) are tried in rounds, with pauses, until the
        budget is spent; when no member can even be connected to, it raises at
        the end of the first round. A member's error answer raises _Refused.
        """
        deadline = time.monotonic() + (self._budget() if budget is None else budget)
        if self._user is not None and self._token is None and path != AUTH_PATH:
            self._authenticate(deadline, key)
        body = json.dumps(payload, separators=(",", ":")).encode()
        members = self._members
        index = self._current
        tried = reached = 0
        pause = PAUSE_FIRST
        reauthenticated = False
        failures: list[str] = []
        cause: BaseException | None = None  # the last driver-level failure, chained to the BackendError
        while True:
            member = members[index % len(members)]
            attempt_deadline = min(deadline, time.monotonic() + self._request_timeout)
            try:
                status, raw = self._exchange(member, path, body, attempt_deadline)
            except _Unreached as exc:
                failures.append(f"{member.label}: {exc}")
                cause = exc.__cause__
            except _Unanswered as exc:
                reached += 1
                cause = exc.__cause__
                if isinstance(cause, _BadResponse):  # not etcd's gateway: trying again changes nothing
                    raise BackendError(f"etcd member {member.label}: {exc}", key=key) from cause
                if not replay:
                    raise BackendError(
                        f"etcd member {member.label} did not answer {path} ({exc}); it may have been applied",
                        key=key,
                    ) from exc
                failures.append(f"{member.label}: no answer ({exc})")
            else:
                reached += 1
                reply = _reply_of(status, raw)
                if status == 200 and "error" not in reply:
                    self._current = index % len(members)
                    return reply
                code = reply.get("code")
                detail = str(reply.get("error") or reply.get("message") or f"HTTP {status}")
                if code == CODE_UNAUTHENTICATED and self._user is not None and not reauthenticated:
                    reauthenticated = True  # the token expired: log in again and retry on the same member
                    self._token = None
                    self._authenticate(deadline, key)
                    continue
                if code in RETRYABLE_CODES or (code is None and status in (502, 503, 504)):
                    if not replay and not any(text in detail for text in NOT_APPLIED):
                        raise BackendError(
                            f"etcd member {member.label} failed {path} ({detail}); it may have been applied",
                            key=key,
                        )
                    failures.append(f"{member.label}: {detail}")
                else:
                    raise self._refused(member, path, status, code, detail, key)
            index += 1
            tried += 1
            self._current = index % len(members)  # calls after this one start at the next member
            left = deadline - time.monotonic()
            if tried % len(members) == 0:
                if not reached:
                    raise BackendError(
                        f"no etcd member reachable at {self.describe()}: "
                        + "; ".join(failures[-len(members) :]),
                        key=key,
                    ) from cause
                if left > 0:
                    sleep(min(pause, left))
                    pause = min(pause * 2, PAUSE_CAP)
                    left = deadline - time.monotonic()
                reached = 0
            if left <= 0:
                raise BackendError(
                    f"etcd at {self.describe()} did not answer {path} in time: "
                    + "; ".join(failures[-len(members) :]),
                    key=key,
                ) from cause

    def _refused(
        self, member: _Member, path: str, status: int, code: Any, detail: str, key: str | None
    ) -> _Refused:
        hint = ""
        if code == CODE_UNAUTHENTICATED or "user name is empty" in detail:
            hint = ": the cluster has authentication on; give user and password"
        elif code == CODE_PERMISSION_DENIED:
            hint = f": user {self._user!r} needs read-write access to the keys under {self.namespace!r}"
        elif code is None and status == 404:
            hint = ": is it etcd 3.4 or later, with its v3 JSON gateway?"
        return _Refused(
            f"etcd member {member.label} refused {path}: {detail}{hint}",
            code=code if isinstance(code, int) else None,
            detail=detail,
            status=status,
            key=key,
        )

    def _authenticate(self, deadline: float, key: str | None) -> None:
        """Log in with user and password; the token goes with every request after (``Authorization``)."""
        try:
            reply = self._post(
                AUTH_PATH,
                {"name": self._user, "password": self._password},
                budget=max(MIN_BUDGET, deadline - time.monotonic()),
                key=key,
            )
        except _Refused as exc:
            if exc.code == CODE_FAILED_PRECONDITION and "not enabled" in exc.detail:
                self._token = ""  # authentication is off in this cluster: nothing to send
                return
            raise BackendError(
                f"etcd authentication as {self._user!r} failed: {exc.detail}", key=key
            ) from None
        self._token = str(reply.get("token") or "")

    # -- leases ---------------------------------------------------------------

    def _grant(self, lease: _Lease, budget: float, key: str) -> None:
        sent = time.monotonic()
        try:
            reply = self._post(
                "/v3/lease/grant", {"ID": str(lease.id), "TTL": str(lease.asked)}, budget=budget, key=key
            )
        except _Refused as exc:
            if exc.code != CODE_FAILED_PRECONDITION or "exists" not in exc.detail:
                raise
            granted = lease.asked  # an earlier try whose answer was lost granted it (at least this long)
        else:
            if reply.get("error"):
                raise BackendError(f"etcd refused a lease for {key!r}: {reply['error']}", key=key)
            granted = int(reply.get("TTL") or lease.asked)
        lease.ttl = max(1, granted)
        lease.refreshed = sent
        lease.deadline = sent + lease.ttl

    def _keepalive(self, lease: _Lease, budget: float, key: str) -> bool:
        """Refresh the lease; False when etcd no longer has it (it ran out, or was revoked)."""
        sent = time.monotonic()
        reply = self._post("/v3/lease/keepalive", {"ID": str(lease.id)}, budget=budget, key=key)
        left = int(reply.get("result", reply).get("TTL") or 0)
        if left <= 0:
            return False
        lease.refreshed = sent
        lease.deadline = sent + left
        return True

    def _revoke(self, lease_id: int, budget: float | None, key: str) -> None:
        """Revoke a lease (etcd deletes its keys with it); a lease that is gone already is fine."""
        try:
            self._post("/v3/lease/revoke", {"ID": str(lease_id)}, budget=budget, key=key)
        except _Refused as exc:
            if exc.code != CODE_NOT_FOUND:
                raise

    def _revoke_quietly(self, lease_id: int, key: str, budget: float | None = None) -> bool:
        """Revoke, never raising (an undo, or an abort); False when etcd could not be told.

        The lease, and its key, then run out by themselves. ``budget`` defaults to ``request_timeout``.
        """
        try:
            self._revoke(lease_id, self._request_timeout if budget is None else budget, key)
        except Exception:  # the store is down: the lease (and its key) expire on their own
            return False
        return True

    # -- locking ------------------------------------------------------------

    def _lock_dir(self, name: str) -> bytes:
        return self._root + _name_part(name).encode("utf-8") + b"/"

    def _record(self) -> str:
        record = {
            "pid": os.getpid(),
            "host": HOST,
            "app": self.application_name,
            "since": round(time.time(), 3),
        }
        return _b64(json.dumps(record, separators=(",", ":")).encode())

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
            raise NotSupportedError("the etcd backend has no transactions; drop transaction=")
        lease = _Lease(
            self._lock_dir(name), shared, _lease_seconds(self._default_ttl if ttl is None else ttl)
        )
        deadline = None if timeout is None or timeout == 0 else time.monotonic() + timeout
        try:
            budget = self._budget_until(deadline)
            self._grant(lease, budget, name)
            if self._take(lease, name, queue=timeout != 0, budget=budget):
                return Grant(name, lock_id, shared, lease.revision, ttl=float(lease.ttl), data=lease)
            if timeout != 0:
                on_wait()
                if self._wait(lease, name, deadline):
                    return Grant(name, lock_id, shared, lease.revision, ttl=float(lease.ttl), data=lease)
        except BaseException as exc:
            # Interrupted or failed: the lease may exist, and a key under it; revoking it removes both.
            # When the cluster just failed us, one short try: otherwise the lease runs out by itself.
            undo_budget = MIN_BUDGET if isinstance(exc, BackendError) else None
            finish(self._revoke_quietly(lease.id, name, undo_budget))
            raise
        finish(self._revoke_quietly(lease.id, name))
        return None

    def _take(self, lease: _Lease, name: str, *, queue: bool, budget: float) -> bool:
        """The one transaction of a try: True when the key was put and holds at once (token in ``lease.revision``).

        With ``queue`` the key is put in any case (the waiter's place in the
        queue) and ``lease.revision`` is set either way. An earlier try whose
        answer was lost is recognised by its key (named after our lease).
        """
        put = {
            "request_put": {
                "key": lease.key64,
                "value": self._record(),
                "lease": str(lease.id),
                "prev_kv": True,
            }
        }
        free = {
            "key": _b64(lease.conflicts),
            "range_end": _b64(_prefix_end(lease.conflicts)),
            "target": "CREATE",
            "result": "EQUAL",
            "create_revision": "0",
        }
        failure = [put] if queue else [{"request_range": {"key": lease.key64, "keys_only": True}}]
        reply = self._post(
            "/v3/kv/txn", {"compare": [free], "success": [put], "failure": failure}, budget=budget, key=name
        )
        revision = int(reply["header"]["revision"])
        responses = reply.get("responses") or [{}]
        if queue or reply.get("succeeded"):
            previous = responses[0].get("response_put", {}).get("prev_kv")
            lease.revision = int(previous["create_revision"]) if previous else revision
            return bool(reply.get("succeeded"))
        mine = _kvs(responses[0])
        if mine:  # our own key, from a try whose answer was lost: it holds
            lease.revision = int(mine[0]["create_revision"])
            return True
        return False

    def _wait(self, lease: _Lease, name: str, deadline: float | None) -> bool:
        """Wait in the queue until nothing is before our key (True) or ``deadline`` passes (False)."""
        failed_watches = 0
        while True:
            budget = self._budget_until(deadline)
            before = _range(
                lease.conflicts,
                _prefix_end(lease.conflicts),
                max_create_revision=str(lease.revision - 1),
                sort_order="DESCEND",
                sort_target="CREATE",
                limit="1",
                keys_only=True,
            )
            mine = {"key": lease.key64, "keys_only": True}
            reply = self._post(
                "/v3/kv/txn",
                {"compare": [], "success": [{"request_range": mine}, {"request_range": before}]},
                budget=budget,
                key=name,
            )
            responses = reply.get("responses") or [{}, {}]
            own = _kvs(responses[0])
            if not own or int(own[0].get("create_revision", 0)) != lease.revision:
                # Our key is gone: the lease ran out while we waited (a pause), or an operator broke it.
                # Queue again, at the back, under a new lease.
                self._revoke_quietly(lease.id, name)
                lease.new_identity()
                self._grant(lease, budget, name)
                if self._take(lease, name, queue=True, budget=budget):
                    return True
                continue
            ahead = _kvs(responses[1])
            if not ahead:
                return True
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            due = lease.refreshed + lease.ttl / 3  # our own lease needs its keep-alive then
            until = due if deadline is None else min(deadline, due)
            if until > now:
                outcome = self._watch_deleted(ahead[0]["key"], int(reply["header"]["revision"]) + 1, until)
                if outcome == WATCH_FAILED:  # pause before looking again, so a failing member is not hammered
                    failed_watches = min(failed_watches + 1, 4)
                    sleep(min(PAUSE_CAP * failed_watches, max(0.0, until - time.monotonic())))
                else:
                    failed_watches = 0
            if time.monotonic() >= lease.refreshed + lease.ttl / 3:
                self._keepalive(lease, budget, name)  # gone: the next look finds our key gone

    def _watch_deleted(self, key64: str, start_revision: int, until: float) -> int:
        """Watch one key from ``start_revision`` until it is deleted or ``until``: WATCH_DELETED, _TIMEOUT or _FAILED.

        The watch goes to the current member on a connection of its own. A
        member that does not confirm the watch within ``request_timeout``
        (frozen, cut off) is left for the next one.
        """
        member = self._members[self._current]
        confirm_by = min(until, time.monotonic() + self._request_timeout)
        try:
            conn, _ = self._open(member, confirm_by, fresh=True)
        except _Unreached:
            self._current = (self._current + 1) % len(self._members)
            return WATCH_FAILED
        request = {
            "create_request": {"key": key64, "start_revision": str(start_revision), "filters": ["NOPUT"]}
        }
        body = json.dumps(request, separators=(",", ":")).encode()
        # hasleader: the member ends the watch when it loses its leader, instead of going quiet.
        head = self._head(member, "/v3/watch", len(body), b"Grpc-Metadata-hasleader: true\r\n")
        confirmed = False
        pending = bytearray()
        try:
            conn.sock.send(head + body, _remaining(confirm_by))
            status, headers = conn.read_head(confirm_by)
            if status != 200 or "chunked" not in headers.get("transfer-encoding", "").lower():
                self._current = (self._current + 1) % len(self._members)
                return WATCH_FAILED
            while True:
                chunk = conn.read_chunk(until if confirmed else confirm_by)
                if chunk is None:
                    return WATCH_FAILED  # the member ended the stream
                pending += chunk
                while b"\n" in pending:
                    line, _, rest = bytes(pending).partition(b"\n")
                    pending = bytearray(rest)
                    message = _reply_of(200, line)
                    result = message.get("result")
                    if not isinstance(result, dict) or result.get("canceled"):
                        return WATCH_FAILED  # an error, or a canceled watch (compacted, leader lost)
                    confirmed = confirmed or bool(result.get("created"))
                    if any(event.get("type") == "DELETE" for event in result.get("events") or ()):
                        return WATCH_DELETED
        except OSError:
            if confirmed or time.monotonic() >= until:
                return WATCH_TIMEOUT  # the slice is over
            if time.monotonic() >= confirm_by:
                self._current = (self._current + 1) % len(self._members)  # no confirmation in time
            return WATCH_FAILED
        finally:
            conn.close()

    def release(self, grant: Grant) -> None:
        lease: _Lease = grant.data
        mine = {
            "key": lease.key64,
            "target": "CREATE",
            "result": "EQUAL",
            "create_revision": str(grant.token),
        }
        reply = self._post(
            "/v3/kv/txn",
            {"compare": [mine], "success": [{"request_delete_range": {"key": lease.key64}}], "failure": []},
            replay=False,
            key=grant.name,
        )
        if not reply.get("succeeded"):
            raise LockLostError(
                f"the lock {grant.name!r} (token {grant.token}) was lost before release: its lease expired "
                "or its key was deleted, and another holder may have taken it",
                key=grant.name,
            )
        self._revoke_quietly(lease.id, grant.name)

    def abort(self, grant: Grant) -> None:
        finish(self._revoke_quietly(grant.data.id, grant.name))

    def renew(self, grant: Grant, ttl: float | None = None) -> bool:
        lease: _Lease = grant.data
        # Never spend longer than the lease has left (as far as we know): a loss is then found in time.
        budget = max(MIN_BUDGET, lease.deadline - time.monotonic())
        if ttl is not None and _lease_seconds(ttl) not in (lease.asked, lease.ttl):
            return self._move(grant, lease, _lease_seconds(ttl), budget)
        if not self._keepalive(lease, budget, grant.name):
            return False
        return self._owns(grant, max(MIN_BUDGET, lease.deadline - time.monotonic()))

    def _move(self, grant: Grant, lease: _Lease, asked: int, budget: float) -> bool:
        """A new lease length: etcd cannot change a lease's, so the key moves to a new lease (same revision)."""
        old_id, old_asked = lease.id, lease.asked
        new_id = _new_lease_id()
        lease.id, lease.asked = new_id, asked
        try:
            self._grant(lease, budget, grant.name)
            mine = {
                "key": lease.key64,
                "target": "CREATE",
                "result": "EQUAL",
                "create_revision": str(grant.token),
            }
            put = {"request_put": {"key": lease.key64, "lease": str(new_id), "ignore_value": True}}
            reply = self._post(
                "/v3/kv/txn",
                {"compare": [mine], "success": [put], "failure": []},
                budget=budget,
                key=grant.name,
            )
            moved = bool(reply.get("succeeded"))
        except BaseException:
            finish(self._revoke_quietly(new_id, grant.name))
            lease.id, lease.asked = old_id, old_asked
            raise
        self._revoke_quietly(old_id if moved else new_id, grant.name)
        if not moved:
            lease.id, lease.asked = old_id, old_asked
        return moved

    def check(self, grant: Grant) -> bool:
        return self._owns(grant, None)

    def _owns(self, grant: Grant, budget: float | None) -> bool:
        """Is our key there, made by this acquisition (its create revision) and under our lease?"""
        lease: _Lease = grant.data
        reply = self._post(
            "/v3/kv/range", {"key": lease.key64, "keys_only": True}, budget=budget, key=grant.name
        )
        kvs = _kvs(reply)
        return (
            bool(kvs)
            and int(kvs[0].get("create_revision", 0)) == grant.token
            and int(kvs[0].get("lease", 0)) == lease.id
        )

    def force_release(self, name: str, lock_id: int, *, terminate: bool = False) -> int:
        """Delete the keys of the lock's current holders, whoever they are, and revoke their leases; how many.

        Waiters keep their places: the first of them holds next. A holder that
        still runs finds its key gone at its next renewal (a loss).
        """
        lock_dir = self._lock_dir(name)
        queue = self._queue(lock_dir, name)
        freed = 0
        for kv in queue[: _heads(queue, lock_dir)]:
            theirs = {
                "key": kv["key"],
                "target": "CREATE",
                "result": "EQUAL",
                "create_revision": kv["create_revision"],
            }
            reply = self._post(
                "/v3/kv/txn",
                {
                    "compare": [theirs],
                    "success": [{"request_delete_range": {"key": kv["key"]}}],
                    "failure": [],
                },
                key=name,
            )
            if reply.get("succeeded"):
                freed += 1
                if int(kv.get("lease", 0)):
                    self._revoke_quietly(int(kv["lease"]), name)
        return freed

    # -- inspection ---------------------------------------------------------

    def _queue(self, lock_dir: bytes, name: str) -> list[dict[str, Any]]:
        """The lock's keys, holders first then waiters, in the order of their create revisions."""
        request = _range(
            lock_dir, _prefix_end(lock_dir), sort_order="ASCEND", sort_target="CREATE", limit=str(QUEUE_LIMIT)
        )
        return _kvs(self._post("/v3/kv/range", request, key=name))

    def held(self, name: str, lock_id: int) -> bool:
        lock_dir = self._lock_dir(name)
        request = _range(lock_dir, _prefix_end(lock_dir), limit="1", keys_only=True)
        return bool(_kvs(self._post("/v3/kv/range", request, key=name)))

    def holders(self, name: str, lock_id: int) -> list[Holder]:
        lock_dir = self._lock_dir(name)
        queue = self._queue(lock_dir, name)
        return [
            _holder(name, lock_id, kv, _is_reader(kv, lock_dir)) for kv in queue[: _heads(queue, lock_dir)]
        ]

    def waiters(self, name: str, lock_id: int) -> list[Holder]:
        """Who waits for the lock, first in line first (etcd only: the queue is in the store)."""
        lock_dir = self._lock_dir(name)
        queue = self._queue(lock_dir, name)
        return [
            _holder(name, lock_id, kv, _is_reader(kv, lock_dir)) for kv in queue[_heads(queue, lock_dir) :]
        ]

    def list_held(self) -> list[Holder]:
        """Holders of every lock under the namespace (one range read, bounded)."""
        request = _range(self._root, _prefix_end(self._root), limit=str(LIST_HELD_LIMIT))
        locks: dict[bytes, list[dict[str, Any]]] = {}
        for kv in _kvs(self._post("/v3/kv/range", request)):
            part = _unb64(kv.get("key", ""))[len(self._root) :].split(b"/", 1)[0]
            locks.setdefault(part, []).append(kv)
        out: list[Holder] = []
        for part in sorted(locks):
            try:
                name = unquote(part.decode("utf-8"), errors="strict")
            except UnicodeDecodeError:  # not a key kannuki wrote
                continue
            lock_dir = self._root + part + b"/"
            queue = sorted(locks[part], key=lambda kv: int(kv.get("create_revision", 0)))
            lock_id = compute_lock_id(name)
            out.extend(
                _holder(name, lock_id, kv, _is_reader(kv, lock_dir))
                for kv in queue[: _heads(queue, lock_dir)]
            )
        return out

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        for member in self._members:
            with self._mutex:
                idle, member.idle = member.idle, []
            for conn in idle:
                conn.close()

    def after_fork_in_child(self) -> None:
        # The parent's connections are not ours to use nor to close: keep them referenced (collecting
        # them would close sockets the parent still uses) and start with none.
        self._mutex = Mutex()
        for member in self._members:
            self._parents_connections.extend(member.idle)
            member.idle = []

    def describe(self) -> str:
        if self._url:
            return self._url
        scheme = "etcds" if self._ssl is not None else "etcd"
        user = f"{quote(self._user, safe='')}:***@" if self._user is not None else ""
        return f"{scheme}://{user}" + ",".join(member.label for member in self._members)
