"""MQTT sink (paho-mqtt 2): every event published with QoS 1 (or 2); deliver() returns only after
the broker acknowledged every message of the batch (PUBACK/PUBCOMP).

Topics (`topic_prefix` defaults to `carecard/v1`, the schema version):

    <prefix>/<device>/<kind>                 e.g. carecard/v1/861234567890123/position
    <prefix>/<device>/alert/<alert_kind>     e.g. carecard/v1/861234567890123/alert/inactivity

Payload: the event as UTF-8 JSON (docs/events.md), not retained. Subscribe to `<prefix>/#` for
everything, `<prefix>/+/sos` for SOS of every card, `<prefix>/+/alert/#` for alerts.
Delivery is at-least-once: after a broker outage the batch in flight is published again, so a
subscriber can see an event twice; de-duplicate on the event `id`. Order is kept: a batch is
published in log order on one connection and the next batch starts only after the whole batch
was acknowledged.

Reconnection: paho's network thread reconnects on its own, waiting `reconnect_min` seconds
(default 1) and doubling up to `reconnect_max` (30); while disconnected, deliver() fails at once
without queueing anything in paho, and the runner retries with its own jittered backoff.

Keys: host (default localhost), port (1883, or 8883 with tls), topic_prefix, qos (1 or 2),
client_id (default carecard-<sink name>-<pid>), username, password, keepalive (30 s),
publish_timeout (10 s), reconnect_min, reconnect_max, and tls: true (system CAs) or a table
{ca_file, cert_file, key_file, insecure = false}.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Mapping

import paho.mqtt.client as mqtt

from carecard.host.events import ALERT_KIND
from carecard.host.sinks.base import ConfigError, Sink, SinkError, SinkTable, SinkUnavailable

log = logging.getLogger("carecard.host.sinks")

DEFAULT_TOPIC_PREFIX = "carecard/v1"


def topic_suffix(event: Mapping[str, Any]) -> str:
    """`<device>/<kind>`, or `<device>/alert/<alert_kind>` for alerts."""
    if event["kind"] == ALERT_KIND:
        return f"{event['device']}/alert/{event['data']['alert']}"
    return f"{event['device']}/{event['kind']}"


def event_topic(prefix: str, event: dict[str, Any]) -> str:
    """The documented topic of an event."""
    return f"{prefix}/{topic_suffix(event)}"


def check_topic_prefix(table: SinkTable, key: str, prefix: str) -> None:
    """A topic prefix holds no wildcard and is not empty."""
    if any(c in prefix for c in "+#\0") or not prefix.strip("/"):
        raise ConfigError(table.where, key, f"{prefix!r}: no wildcards (+ #), not empty")


def tls_options(table: SinkTable) -> dict[str, Any] | None:
    """The `tls` key: None (false, the default), {} (true: system CAs) or the table's
    {ca_file, cert_file, key_file, insecure}, files checked to exist."""
    tls_raw = table.raw("tls", False)
    tls: dict[str, Any] | None
    if tls_raw is False:
        tls = None
    elif tls_raw is True:
        tls = {}
    elif isinstance(tls_raw, dict):
        tls_table = SinkTable(tls_raw, f"{table.where}.tls")
        tls = {key: tls_table.str(key) for key in ("ca_file", "cert_file", "key_file")}
        tls["insecure"] = tls_table.bool("insecure", False)
        tls_table.check_unknown()
        for key in ("ca_file", "cert_file", "key_file"):
            if tls[key] and not Path(tls[key]).is_file():
                raise ConfigError(tls_table.where, key, f"{tls[key]}: no such file")
    else:
        raise ConfigError(table.where, "tls", "expected true, false or a table")
    return tls


def connection_options(table: SinkTable) -> dict[str, Any]:
    """The broker connection keys every MQTT-based sink shares (host, port, tls, username,
    password, client_id, keepalive, publish_timeout, reconnect_min, reconnect_max)."""
    tls = tls_options(table)
    username = table.str("username")
    password = table.str("password")
    if password is not None and username is None:
        raise ConfigError(table.where, "password", "given without a username")
    return {
        "host": table.str("host", "localhost") or "localhost",
        "port": table.int("port", 8883 if tls is not None else 1883, minimum=1, maximum=65535),
        "client_id": table.str("client_id"),
        "username": username,
        "password": password,
        "tls": tls,
        "keepalive": table.int("keepalive", 30, minimum=5, maximum=3600),
        "publish_timeout": table.float("publish_timeout", 10.0, minimum=0.1, maximum=600),
        "reconnect_min": table.float("reconnect_min", 1.0, minimum=0.05, maximum=600),
        "reconnect_max": table.float("reconnect_max", 30.0, minimum=0.05, maximum=3600),
    }


class MqttSink(Sink):
    type_name = "mqtt"

    def __init__(self, name: str, *, host: str = "localhost", port: int = 1883,
                 topic_prefix: str = DEFAULT_TOPIC_PREFIX, qos: int = 1, client_id: str | None = None,
                 username: str | None = None, password: str | None = None,
                 tls: dict[str, Any] | None = None, keepalive: int = 30,
                 publish_timeout: float = 10.0, reconnect_min: float = 1.0,
                 reconnect_max: float = 30.0):
        super().__init__(name)
        self.host = host
        self.port = port
        self.topic_prefix = topic_prefix.rstrip("/")
        self.qos = qos
        self.client_id = client_id or f"carecard-{name}-{os.getpid()}"
        self.username = username
        self.password = password
        self.tls = tls
        self.keepalive = keepalive
        self.publish_timeout = publish_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self._client: mqtt.Client | None = None
        self._cond = threading.Condition()
        self._acked: set[int] = set()
        self._disconnects = 0
        self._connect_error: str | None = None
        # (topic, online payload, offline payload) of a retained status of this client: published
        # `online` on every connect, and the broker publishes `offline` as the client's last will
        # when it loses the client
        self.status_topic: tuple[str, bytes, bytes] | None = None
        # topics subscribed to on every connect; their messages go to received() (network thread)
        self.subscriptions: list[str] = []
        self.published = 0
        self.connects = 0

    @classmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "MqttSink":
        prefix = table.str("topic_prefix", DEFAULT_TOPIC_PREFIX) or DEFAULT_TOPIC_PREFIX
        check_topic_prefix(table, "topic_prefix", prefix)
        return cls(name, topic_prefix=prefix, qos=table.int("qos", 1, minimum=1, maximum=2),
                   **connection_options(table))

    # --- paho callbacks (network thread) -----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        with self._cond:
            if reason.is_failure:
                self._connect_error = f"broker refused the connection: {reason}"
            else:
                self._connect_error = None
                self.connects += 1
            self._cond.notify_all()
        if not reason.is_failure and self.status_topic is not None:
            client.publish(self.status_topic[0], self.status_topic[1], qos=self.qos, retain=True)
        if not reason.is_failure:
            for topic in self.subscriptions:
                client.subscribe(topic, qos=1)
        if reason.is_failure:
            log.warning("sink %s: MQTT %s:%d refused the connection: %s", self.name, self.host,
                        self.port, reason)
        else:
            log.info("sink %s: connected to MQTT broker %s:%d", self.name, self.host, self.port)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        with self._cond:
            self._disconnects += 1
            self._cond.notify_all()
        log.info("sink %s: disconnected from MQTT broker %s:%d (%s)", self.name, self.host,
                 self.port, reason)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def received(self, topic: str, payload: bytes) -> None:
        """A message on one of `subscriptions` (network thread; must not block)."""

    # --- life cycle ---------------------------------------------------------------------------

    def _start(self) -> None:
        if self._client is not None:
            return
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = lambda client, userdata, message: self.received(message.topic, message.payload)
        if self.status_topic is not None:
            client.will_set(self.status_topic[0], self.status_topic[2], qos=self.qos, retain=True)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls is not None:
            try:
                client.tls_set(ca_certs=self.tls.get("ca_file"), certfile=self.tls.get("cert_file"),
                               keyfile=self.tls.get("key_file"), cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise SinkError(f"MQTT TLS set-up failed: {exc}") from exc
            if self.tls.get("insecure"):
                client.tls_insecure_set(True)
        client.reconnect_delay_set(self.reconnect_min, self.reconnect_max)  # type: ignore[arg-type]
        client.connect_async(self.host, self.port, self.keepalive)
        client.loop_start()
        self._client = client

    async def start(self) -> None:
        await self.run_io(self._start)

    def _publish(self, events: list[dict[str, Any]]) -> None:
        self.publish_messages([
            (event_topic(self.topic_prefix, event),
             json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), False)
            for event in events])

    def publish_messages(self, messages: list[tuple[str, bytes, bool]]) -> None:
        """Publish (topic, payload, retain) messages in order at the sink's QoS and return once the
        broker acknowledged every one (worker thread). Raises SinkUnavailable with `delivered` =
        how many messages, from the first, were acknowledged."""
        client = self._client
        if client is None:
            raise SinkUnavailable("MQTT client not started")
        if not messages:
            return
        if not client.is_connected():
            # wait briefly for a connection that is being made (start-up, reconnect)
            with self._cond:
                self._cond.wait_for(client.is_connected, timeout=min(0.5, self.publish_timeout))
            if not client.is_connected():
                reason = self._connect_error or "not connected"
                raise SinkUnavailable(f"MQTT broker {self.host}:{self.port}: {reason}")
        with self._cond:
            self._acked.clear()
            generation = self._disconnects
        infos = []
        for topic, payload, retain in messages:
            info = client.publish(topic, payload, qos=self.qos, retain=retain)
            infos.append(info)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break
        deadline = time.monotonic() + self.publish_timeout
        with self._cond:
            while True:
                done = 0
                for info in infos:
                    if info.mid not in self._acked:
                        break
                    done += 1
                if done == len(messages):
                    self.published += done
                    return
                remaining = deadline - time.monotonic()
                broken = self._disconnects != generation or infos[-1].rc != mqtt.MQTT_ERR_SUCCESS
                if broken or remaining <= 0:
                    self.published += done
                    why = "connection lost" if broken else f"no acknowledgement in {self.publish_timeout:g} s"
                    raise SinkUnavailable(
                        f"MQTT broker {self.host}:{self.port}: {why} ({done} of {len(messages)} acknowledged)",
                        delivered=done)
                self._cond.wait(remaining)

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        await self.run_io(self._publish, events)

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.disconnect()
            finally:
                client.loop_stop()

    async def close(self) -> None:
        try:
            await self.run_io(self._close)
        finally:
            self.release_io()

    def stats(self) -> dict[str, Any]:
        client = self._client
        return {"connected": bool(client and client.is_connected()), "published": self.published,
                "connects": self.connects}
