"""Real etcd clusters on loopback for the tests and the benchmarks (Debian's ``etcd-server`` package).

:func:`shared_cluster` starts one 3-member cluster per test session, on free ports with its data
in a temporary folder, and stops it when the session ends (``release``, and atexit as a safety
net). Tests that stop, kill or freeze members put the cluster back with :meth:`EtcdCluster.heal`
before they end, so every test finds all members up and a leader elected. :class:`EtcdCluster`
also makes one-off clusters (TLS and authentication, a single member), stopped by their test.

Every wait here is bounded by time. :meth:`EtcdCluster.post` is a raw call to the v3 JSON
gateway, for tests that look at or change the store behind kannuki's back.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")
OPENSSL = shutil.which("openssl")
# Raft timing: etcd's defaults (a leader is elected within a few seconds of losing one).
HEARTBEAT_MS = 100
ELECTION_MS = 1000


class EtcdUnavailable(Exception):
    """The etcd binary is missing, or the cluster did not come up."""


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (held open together while picked)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Member:
    """One etcd process: its name, ports, data folder and (while it runs) its process."""

    def __init__(self, name: str, client_port: int, peer_port: int, data_dir: Path) -> None:
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self) -> str:
        return f"<etcd member {self.name} {self.address}>"


class EtcdCluster:
    """``size`` etcd members on loopback; ``certs`` (from :func:`make_certs`) serves clients over TLS."""

    def __init__(
        self, base: Path, size: int = 3, *, certs: dict[str, Path] | None = None, extra: tuple[str, ...] = ()
    ) -> None:
        if ETCD is None:
            raise EtcdUnavailable("etcd is not installed (Debian: apt-get install etcd-server etcd-client)")
        self.base = base
        self.certs = certs
        self.extra = extra
        ports = free_ports(2 * size)
        self.members = [Member(f"m{i}", ports[2 * i], ports[2 * i + 1], base / f"m{i}") for i in range(size)]
        self.scheme = "https" if certs else "http"
        self.token: str | None = None  # an auth token for post(), once authentication is on

    # -- processes ----------------------------------------------------------------

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    def _launch(self, member: Member, state: str) -> None:
        client = f"{self.scheme}://{member.address}"
        args = [
            str(ETCD),
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-cluster", self._initial_cluster(),
            "--initial-cluster-state", state,
            "--initial-cluster-token", f"kannuki-{self.base.name}",
            "--heartbeat-interval", str(HEARTBEAT_MS),
            "--election-timeout", str(ELECTION_MS),
            "--log-level", "warn",
            *self.extra,
        ]  # fmt: skip
        if self.certs:
            args += ["--cert-file", str(self.certs["cert"]), "--key-file", str(self.certs["key"])]
        log = open(self.base / f"{member.name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            member.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        member.paused = False

    def start(self, seconds: float = 30.0) -> None:
        """Start every member as a new cluster and wait until it answers with a leader."""
        self.base.mkdir(parents=True, exist_ok=True)
        for member in self.members:
            self._launch(member, "new")
        try:
            self.wait_healthy(seconds)
        except BaseException:
            self.close()
            raise

    def kill(self, member: Member, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL: a crash; SIGTERM: a clean stop) and wait for the process to end."""
        proc = member.proc
        if proc is None:
            return
        if member.paused:
            proc.send_signal(signal.SIGCONT)
            member.paused = False
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        member.proc = None

    def restart(self, member: Member) -> None:
        """Start a stopped member again with its data (it rejoins the cluster)."""
        if not member.running:
            self._launch(member, "existing")

    def pause(self, member: Member) -> None:
        """SIGSTOP: the member is frozen (its sockets stay open; nothing answers)."""
        assert member.proc is not None
        member.proc.send_signal(signal.SIGSTOP)
        member.paused = True

    def resume(self, member: Member, seconds: float = 30.0) -> None:
        """SIGCONT, then wait until the member answers again (it may have been the leader: it steps down)."""
        if member.proc is not None and member.paused:
            member.proc.send_signal(signal.SIGCONT)
            member.paused = False
            self.wait_healthy(seconds)
        member.paused = False

    def heal(self, seconds: float = 30.0) -> None:
        """Every member running and unfrozen, and a leader elected: the state each test starts from."""
        for member in self.members:
            if member.proc is not None and member.paused:
                member.proc.send_signal(signal.SIGCONT)
            member.paused = False
            self.restart(member)
        self.wait_healthy(seconds)

    def close(self) -> None:
        for member in self.members:
            try:
                self.kill(member)
            except OSError:  # already gone
                member.proc = None

    # -- the gateway, by hand -------------------------------------------------------

    def _context(self) -> ssl.SSLContext | None:
        if not self.certs:
            return None
        return ssl.create_default_context(cafile=str(self.certs["ca"]))

    def post(
        self, path: str, payload: dict[str, Any], member: Member | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """One raw POST to a member's v3 gateway (the first running one by default); its JSON answer."""
        target = member or next(m for m in self.members if m.running and not m.paused)
        if self.certs:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", target.client_port, timeout=timeout, context=self._context()
            )
        else:
            conn = http.client.HTTPConnection("127.0.0.1", target.client_port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if self.token:
                headers["Authorization"] = self.token
            conn.request("POST", path, json.dumps(payload), headers)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        reply: dict[str, Any] = json.loads(body.split(b"\n", 1)[0] or b"{}")
        if response.status != 200:
            raise RuntimeError(f"etcd {path}: HTTP {response.status}: {reply}")
        return reply

    def status(self, member: Member) -> dict[str, Any]:
        return self.post("/v3/maintenance/status", {}, member, timeout=2.0)

    def member_id(self, member: Member) -> str:
        return str(self.status(member)["header"]["member_id"])

    def leader(self, seconds: float = 20.0) -> Member:
        """The member that leads now (waits up to ``seconds`` for an election)."""
        deadline = time.monotonic() + seconds
        while True:
            for member in self.members:
                if not member.running or member.paused:
                    continue
                try:
                    status = self.status(member)
                except (OSError, RuntimeError, ValueError):
                    continue
                if status.get("leader") and status.get("leader") == status["header"]["member_id"]:
                    return member
            if time.monotonic() > deadline:
                raise EtcdUnavailable(f"no etcd leader within {seconds}s (logs in {self.base})")
            time.sleep(0.1)

    def wait_healthy(self, seconds: float = 30.0) -> None:
        """Every running member answers a linearizable read (so a leader is elected and reachable)."""
        deadline = time.monotonic() + seconds
        pending = [m for m in self.members if m.running and not m.paused]
        while pending:
            member = pending[0]
            try:
                self.post("/v3/kv/range", {"key": b64("health")}, member, timeout=2.0)
                pending.pop(0)
                continue
            except (OSError, RuntimeError, ValueError, http.client.HTTPException):
                pass
            if member.proc is not None and member.proc.poll() is not None:
                raise EtcdUnavailable(
                    f"etcd member {member.name} exited (log: {self.base}/{member.name}.log)"
                )
            if time.monotonic() > deadline:
                raise EtcdUnavailable(f"etcd did not come up within {seconds}s (logs in {self.base})")
            time.sleep(0.1)

    def url(self, *members: Member, scheme: str | None = None, **query: Any) -> str:
        """A kannuki URL naming ``members`` (all, in order, by default), with ``query`` options."""
        chosen = members or tuple(self.members)
        text = f"{scheme or ('etcds' if self.certs else 'etcd')}://" + ",".join(m.address for m in chosen)
        if query:
            text += "?" + "&".join(f"{name}={value}" for name, value in query.items())
        return text

    def keys(self, prefix: str) -> list[dict[str, Any]]:
        """Every key under ``prefix`` (decoded), sorted by create revision."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        reply = self.post(
            "/v3/kv/range",
            {"key": b64(prefix), "range_end": b64(end), "sort_target": "CREATE", "sort_order": "ASCEND"},
        )
        out = []
        for raw in reply.get("kvs", []):
            kv = dict(raw)
            kv["key"] = base64.b64decode(kv["key"]).decode()
            kv["value"] = base64.b64decode(kv.get("value", "")).decode()
            out.append(kv)
        return out


def make_certs(folder: Path) -> dict[str, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl); paths by role."""
    if OPENSSL is None:
        raise EtcdUnavailable("openssl is not installed: no certificates for the TLS cluster")
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key")}
    ext = folder / "san.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run([str(OPENSSL), *args], check=True, capture_output=True, timeout=60)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=kannuki test CA",
        "-keyout", str(paths["ca-key"]), "-out", str(paths["ca"]),
    )  # fmt: skip
    csr = folder / "server.csr"
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(paths["key"]), "-out", str(csr),
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(paths["ca"]), "-CAkey", str(paths["ca-key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(paths["cert"]),
    )  # fmt: skip
    return paths


def enable_auth(cluster: EtcdCluster, password: str) -> None:
    """Add user root with ``password`` and turn authentication on (through the gateway)."""
    cluster.post("/v3/auth/user/add", {"name": "root", "password": password})
    cluster.post("/v3/auth/role/add", {"name": "root"})
    cluster.post("/v3/auth/user/grant", {"user": "root", "role": "root"})
    cluster.post("/v3/auth/enable", {})
    cluster.token = cluster.post("/v3/auth/authenticate", {"name": "root", "password": password})["token"]


# -- the one cluster of a session ----------------------------------------------------------

_shared: EtcdCluster | None = None
_users = 0


def shared_cluster() -> EtcdCluster:
    """The session's 3-member cluster, started on first use (EtcdUnavailable when it cannot be)."""
    global _shared, _users
    if _shared is None:
        cluster = EtcdCluster(Path(tempfile.mkdtemp(prefix="kannuki-etcd-")))
        cluster.start()
        atexit.register(_stop, cluster)
        _shared = cluster
    _users += 1
    return _shared


def release_shared() -> None:
    """One user of the shared cluster is done; the last one stops it."""
    global _shared, _users
    _users -= 1
    if _users <= 0 and _shared is not None:
        _stop(_shared)
        _shared = None


def _stop(cluster: EtcdCluster) -> None:
    cluster.close()
    shutil.rmtree(cluster.base, ignore_errors=True)
