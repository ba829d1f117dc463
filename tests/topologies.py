"""Real Redis topologies on loopback for the tests: a 6-node cluster, Sentinel, TLS.

Every process is a ``RedisServer`` (redis-server on a free port), stopped by
its PID. Starting one raises ``TopologyUnavailable`` with the reason when the
redis-server binary cannot (no binary, no cluster or TLS support); the
fixtures turn that into a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.cluster import key_slot

from ratelimit_app.testing import RedisServer, free_port, redis_server_binary

SLOTS = 16384
# A replica's first sync starts at once, not after the 5 s default delay.
FAST_SYNC = ["--repl-diskless-sync-delay", "0"]
SERVICE = "mymaster"
NODE_TIMEOUT_MS = 1000


class TopologyUnavailable(RuntimeError):
    """This machine cannot run the topology (the message says why)."""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_servers(servers: list[RedisServer], what: str) -> None:
    try:
        binary = redis_server_binary()
    except RuntimeError as exc:
        raise TopologyUnavailable(str(exc)) from exc
    for server in servers:
        server.binary = binary
        try:
            server.start()
        except RuntimeError as exc:
            stop_all(servers)
            raise TopologyUnavailable(f"{binary} cannot run {what}: {exc}") from exc


def stop_all(servers: list[RedisServer]) -> None:
    for server in servers:
        server.stop()


def command(server: RedisServer, *args):
    """One command on its own short-lived connection; the raw reply (bytes
    and lists, not redis-py's parsed forms)."""
    connection = redis.Connection(port=server.port, socket_timeout=5)
    try:
        connection.send_command(*args)
        return connection.read_response()
    finally:
        connection.disconnect()


def kill_with_replication_lag(
    primary: RedisServer, replica: RedisServer, lag_s: float
) -> None:
    """Kill the primary ``lag_s`` after its replica stopped receiving writes.

    The replica is frozen (SIGSTOP) and the primary drops its link, so the
    primary goes on acknowledging writes the replica never gets; then the
    primary is killed and the replica resumes: the writes of those ``lag_s``
    are lost, as with a replica that lags behind. Freezing alone would not
    do: the kernel still receives the stream for the frozen process.
    """
    if not lag_s:
        kill_holding_port(primary)
        return
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        command(primary, "CLIENT", "KILL", "TYPE", "replica")
        time.sleep(lag_s)
        kill_holding_port(primary)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)


# Ports of killed servers, held until the end of the test process.
_held_ports: list[socket.socket] = []


def kill_holding_port(server: RedisServer) -> None:
    """SIGKILL the server, then hold its port (bound, not listening): a
    server that another test starts meanwhile must not get it, or the
    sentinels would take it for the old primary back and make it a replica."""
    server.kill()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", server.port))
    _held_ports.append(holder)


# -- Cluster -------------------------------------------------------------------

# A node's cluster bus listens on its port + 10000.
BUS_OFFSET = 10000


def cluster_port() -> int:
    """A free port whose bus port (+10000) is free too."""
    while True:
        port = free_port()
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port


class Cluster:
    """3 primaries with a replica each; slots split in three ranges."""

    def __init__(self, primaries: int = 3) -> None:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        args += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS), *FAST_SYNC]
        self.nodes = [
            RedisServer(port=cluster_port(), args=args) for _ in range(2 * primaries)
        ]
        self.primaries = primaries

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"

    def start(self) -> Cluster:
        start_servers(self.nodes, "a cluster")
        try:
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_all(self.nodes)

    def _form(self) -> None:
        ids = [command(node, "CLUSTER MYID").decode() for node in self.nodes]
        step = -(-SLOTS // self.primaries)
        for index, node in enumerate(self.nodes[: self.primaries]):
            slots = range(index * step, min(SLOTS, (index + 1) * step))
            command(node, "CLUSTER ADDSLOTS", *slots)
        for node in self.nodes[1:]:
            command(node, "CLUSTER MEET", "127.0.0.1", self.nodes[0].port)
        wait_for(self._all_known, "every cluster node to know the others")
        for index, replica in enumerate(self.nodes[self.primaries :]):
            command(replica, "CLUSTER REPLICATE", ids[index])
        wait_for(
            lambda: self.healthy() and len(self.live()) == len(self.nodes),
            "cluster state ok with every replica in sync",
        )

    def _all_known(self) -> bool:
        return all(
            len(command(n, "CLUSTER NODES").splitlines()) == len(self.nodes)
            for n in self.nodes
        )

    def live(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process.poll() is None]

    def healthy(self) -> bool:
        """State ok on every live node, one primary per slot range, and
        every live replica in sync."""
        live = self.live()
        states = [command(n, "CLUSTER INFO") for n in live]
        if not all(b"cluster_state:ok" in state for state in states):
            return False
        roles = [command(n, "ROLE") for n in live]
        replicas = [role for role in roles if role[0] == b"slave"]
        return len(roles) - len(replicas) == self.primaries and all(
            role[3] == b"connected" for role in replicas
        )

    def replica_of(self, primary: RedisServer) -> RedisServer:
        for node in self.live():
            role = command(node, "ROLE")
            if role[0] == b"slave" and role[2] == primary.port:
                return node
        raise LookupError(f"no replica of port {primary.port}")

    def node_of(self, key: str) -> RedisServer:
        """The primary that serves ``key``'s slot, as a live node sees it."""
        slot = key_slot(key.encode())
        ranges = command(self.live()[0], "CLUSTER SLOTS")
        for first, last, primary, *_ in ranges:
            if first <= slot <= last:
                return next(n for n in self.nodes if n.port == primary[1])
        raise LookupError(f"no node serves slot {slot}")


# -- Sentinel ------------------------------------------------------------------

SENTINEL_CONFIG = """\
sentinel monitor {service} 127.0.0.1 {primary} 2
sentinel down-after-milliseconds {service} 1000
sentinel failover-timeout {service} 5000
sentinel parallel-syncs {service} 1
"""


class SentinelSet:
    """A primary, one replica and three sentinels watching them."""

    def __init__(self) -> None:
        self.primary = RedisServer(args=FAST_SYNC)
        self.replica = RedisServer(
            args=["--replicaof", "127.0.0.1", str(self.primary.port)]
        )
        config = SENTINEL_CONFIG.format(service=SERVICE, primary=self.primary.port)
        self.sentinels = [
            RedisServer(args=["--sentinel"], config=config) for _ in range(3)
        ]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, self.replica, *self.sentinels]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}"

    def start(self) -> SentinelSet:
        start_servers([self.primary, self.replica], "a primary and a replica")
        wait_for(self._replica_synced, "the replica to sync")
        start_servers(self.sentinels, "Sentinel")
        wait_for(
            self._sentinels_ready, "the sentinels to find each other and the replica"
        )
        return self

    def stop(self) -> None:
        stop_all(self.servers)

    def _replica_synced(self) -> bool:
        role = command(self.replica, "ROLE")
        return role[0] == b"slave" and role[3] == b"connected"

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with redis.Redis(host="127.0.0.1", port=sentinel.port) as client:
                master = client.sentinel_master(SERVICE)
            if master["num-other-sentinels"] < 2 or master["num-slaves"] < 1:
                return False
        return True

    def master_port(self) -> int:
        """The port the sentinels currently name as the master."""
        reply = command(self.sentinels[0], "SENTINEL GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(reply[1])

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in (self.primary, self.replica) if s.port == port)


# -- TLS -----------------------------------------------------------------------


class TLSServer:
    """A redis-server with a TLS port, certificates from a throwaway CA."""

    def __init__(self) -> None:
        self.certs = Path(tempfile.mkdtemp(prefix="ratelimit-tls-"))
        self.tls_port = 0
        self.server: RedisServer | None = None

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"

    def url(self, query: str = "") -> str:
        return f"rediss://127.0.0.1:{self.tls_port}/0" + (f"?{query}" if query else "")

    def start(self) -> TLSServer:
        make_certificates(self.certs)
        self.tls_port = free_port()
        args = ["--tls-port", str(self.tls_port), "--tls-auth-clients", "no"]
        args += ["--tls-cert-file", str(self.certs / "server.crt")]
        args += ["--tls-key-file", str(self.certs / "server.key")]
        args += ["--tls-ca-cert-file", str(self.ca)]
        self.server = RedisServer(args=args)
        start_servers([self.server], "TLS (built without it?)")
        return self

    def stop(self) -> None:
        if self.server:
            self.server.stop()
        shutil.rmtree(self.certs, ignore_errors=True)


def make_certificates(directory: Path) -> None:
    """ca.crt and server.crt/server.key for 127.0.0.1, with the openssl CLI."""
    openssl = shutil.which("openssl")
    if not openssl:
        raise TopologyUnavailable("no openssl command to make TLS certificates")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    steps = [
        [
            "req",
            "-x509",
            *ec,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=ratelimit-test-ca",
        ],
        [
            "req",
            *ec,
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        [
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    ]
    for step in steps:
        subprocess.run([openssl, *step], cwd=directory, check=True, capture_output=True)
