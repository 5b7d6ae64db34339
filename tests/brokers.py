"""Real peers for the sink tests: a mosquitto broker on a free loopback port, a paho subscriber,
and a local HTTP server that fails on purpose. Plain helpers, imported by the tests."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

def daemon_path(program: str, package: str) -> str:
    """Where a Debian package's daemon is (sbin daemons are off a normal user's PATH)."""
    for folder in ("/usr/sbin", "/usr/bin"):
        path = Path(folder) / program
        if path.exists():
            return str(path)
    found = shutil.which(program)
    if found:
        return found
    raise RuntimeError(f"{program} not found: install Debian's `{package}` package (make test does: make debs)")


def mosquitto_path() -> str:
    return daemon_path("mosquitto", "mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 5.0, up: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.01)
    raise TimeoutError(f"port {port} did not come {'up' if up else 'down'} in {timeout} s")


class Mosquitto:
    """mosquitto on 127.0.0.1:<free port> with a temporary config and persistence (so a
    persistent subscriber's session and queued messages survive a broker restart)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # run as whoever runs the tests: as root, mosquitto would switch to the `mosquitto`
            # user, which cannot write its persistence file into pytest's private tmp dir
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "max_queued_messages 100000\n"
            "log_dest stderr\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(workdir / "mosquitto.log", "ab")

    def start(self) -> None:
        self.proc = subprocess.Popen([mosquitto_path(), "-c", str(self.config)],
                                     stdout=self.log, stderr=self.log)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
        self.log.close()


class Subscriber:
    """A real paho subscriber (persistent session, QoS 1) recording payloads in arrival order."""

    def __init__(self, port: int, topic: str, client_id: str = "carecard-test-sub"):
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.topic = topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self.subscribed.wait(5):
            raise TimeoutError("subscriber did not subscribe")

    def _on_connect(self, client, userdata, flags, reason, properties):  # noqa: ANN001
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, message):  # noqa: ANN001
        with self.cond:
            self.messages.append((message.topic, json.loads(message.payload)))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, dict[str, Any]]]], bool],
                 timeout: float = 20.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.messages), timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class FlakyHTTPServer:
    """http.server on 127.0.0.1 in a thread. `behaviour(request_number, event) -> action` decides
    each answer: an int status, ("sleep", seconds) to time the client out, or "drop" to close the
    connection without answering. Every request is recorded with its headers and raw body."""

    def __init__(self, behaviour: Callable[[int, dict[str, Any]], Any], port: int = 0):
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                event = json.loads(body)
                with outer.lock:
                    number = len(outer.requests)
                    outer.requests.append({"headers": dict(self.headers), "body": body, "event": event,
                                           "path": self.path})
                action = outer.behaviour(number, event)
                if action == "drop":
                    self.close_connection = True
                    return
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = 200
                status = int(action)
                if 200 <= status < 300:
                    with outer.lock:
                        outer.accepted.append({"headers": dict(self.headers), "body": body, "event": event})
                reply = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def documented_signature(secret: str, timestamp: str, body: bytes) -> str:
    """docs/events.md: sha256=<hex HMAC-SHA256(secret, timestamp "." body)>, written out here
    independently of the sink's own code."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class RawSubscriber:
    """A real paho subscriber (clean session, QoS 1) recording every message as it arrives:
    (topic, payload bytes, retain flag). Messages a broker hands out from its retained store at
    subscription carry retain=True; live ones do not (MQTT 3.1.1)."""

    def __init__(self, port: int, topic: str, client_id: str = "carecard-test-raw"):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=True)
        subscribed = threading.Event()
        self.client.on_connect = lambda client, *a: client.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        if not subscribed.wait(5):
            raise TimeoutError("subscriber did not subscribe")

    def _on_message(self, client, userdata, message):  # noqa: ANN001
        with self.cond:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool],
                 timeout: float = 20.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.messages), timeout)

    def latest(self) -> dict[str, tuple[bytes, bool]]:
        """The last payload and retain flag seen per topic."""
        with self.cond:
            return {topic: (payload, retain) for topic, payload, retain in self.messages}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
