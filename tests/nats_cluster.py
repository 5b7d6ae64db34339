"""Throwaway NATS servers with JetStream for the tests: Debian's `nats-server` (`make debs`
installs it), one node or a cluster of several, each on free loopback ports (client, route,
monitoring) with its JetStream store in a temp folder. Nodes can be SIGKILLed and started again
(same name, ports and store)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from brokers import daemon_path

START_TIMEOUT_S = 30.0


def nats_server_path() -> str:
    return daemon_path("nats-server", "nats-server")


def _reserve_port() -> socket.socket:
    """A loopback port bound (not listening: clients are refused, as by a server that is down)
    and kept until the node starts, so no other process of a busy machine takes it meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


class NatsNode:
    def __init__(self, name: str, root: Path, cluster: "NatsCluster"):
        self.name = name
        self.root = root
        self.cluster = cluster
        self._reserved: list[socket.socket] = []
        self.new_ports()
        self.process: subprocess.Popen[bytes] | None = None
        self.config = root / f"{name}.conf"

    def new_ports(self) -> None:
        self._release()
        self._reserved = [_reserve_port() for _ in range(3)]
        self.port, self.route_port, self.monitor_port = (sock.getsockname()[1] for sock in self._reserved)

    def _release(self) -> None:
        for sock in self._reserved:
            sock.close()
        self._reserved = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        store = self.root / self.name
        store.mkdir(exist_ok=True)
        lines = [
            f'server_name: "{self.name}"',
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.monitor_port}",
            f"max_payload: {self.cluster.max_payload}",
            f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 512MB }}',
        ]
        if len(self.cluster.nodes) > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{node.route_port}" for node in self.cluster.nodes)
            lines.append(f'cluster {{ name: "carecard-test", listen: 127.0.0.1:{self.route_port}, '
                         f"routes: [{routes}] }}")
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self._release()
        log = open(self.root / f"{self.name}.log", "ab")
        self.process = subprocess.Popen([nats_server_path(), "-c", str(self.config)],
                                        stdout=log, stderr=log, cwd=self.root)
        log.close()

    def kill(self) -> None:
        """SIGKILL: no goodbye to the cluster, like a machine that died."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def monitor(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=2) as answer:
            return json.loads(answer.read())

    def serving(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


class NatsCluster:
    """`size` nodes named n1..nN (one node: no cluster block, JetStream standalone)."""

    def __init__(self, workdir: Path, size: int = 3, *, max_payload: int = 1024 * 1024):
        self.root = Path(workdir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_payload = max_payload
        self.nodes: list[NatsNode] = []
        self.nodes = [NatsNode(f"n{i}", self.root, self) for i in range(1, size + 1)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def node(self, name: str) -> NatsNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def start(self) -> "NatsCluster":
        for attempt in range(5):
            for node in self.nodes:
                node.write_config()
                node.start()
            try:
                self.wait_ready()
                return self
            except RuntimeError as exc:
                # another process took a port in the instant between release and bind: new ports
                if "address already in use" not in str(exc) or attempt == 4:
                    raise
                self.stop()
                for node in self.nodes:
                    node.new_ports()
        raise AssertionError("unreachable")

    def wait_ready(self) -> None:
        """Every running node serves clients and, in a cluster, knows the JetStream meta leader."""
        deadline = time.monotonic() + START_TIMEOUT_S
        running = [node for node in self.nodes if node.process is not None]
        while True:
            for node in running:
                assert node.process is not None
                if node.process.poll() is not None:
                    log = (self.root / f"{node.name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"nats-server {node.name} exited ({node.process.returncode}): {log}")
            if all(node.serving() and self._meta_leader(node) for node in running):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"NATS cluster not ready in {START_TIMEOUT_S} s (logs in {self.root})")
            time.sleep(0.05)

    def _meta_leader(self, node: NatsNode) -> bool:
        if len(self.nodes) == 1:
            return True
        try:
            return bool(node.monitor("/jsz").get("meta_cluster", {}).get("leader"))
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        for node in self.nodes:
            node._release()
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(10)
                except subprocess.TimeoutExpired:
                    node.kill()
            node.process = None
