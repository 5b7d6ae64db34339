"""Inbound acknowledgement paths: a backend acknowledges or resolves an alert (docs/events.md,
"Acknowledging alerts").

Both paths take the same request, a JSON object:

    {"alert_id": "<the alert's id>", "action": "acknowledge" | "resolve",
     "by": "<who: a name, a number, an account>", "reason": "<optional text>"}

and queue it (storage.AlertStore.request_alert_action) for the running engine, which carries it
out at its next step; the alert's `acknowledged` / `resolved` event then goes out through every
sink like any other alert event.

- HTTP (`[engine] http = "HOST:PORT"`, `http_secret`): `POST /v1/alert-actions` signed with the
  webhook sink's scheme: headers `X-CareCard-Timestamp` (Unix seconds) and
  `X-CareCard-Signature: sha256=<hex HMAC-SHA256(secret, timestamp "." raw body)>`. A missing or
  bad signature is 401, a timestamp more than `TOLERANCE_S` from the receiver's clock is 401, a
  signature already used (a replay) is 409; a bad request 400; an unknown alert 404; an alert
  already resolved (or acknowledged, for acknowledge) 409; queued 202 with
  {"request": ID, "alert_id", "action", "state": "accepted"}. Every error body is
  {"error": "<one line: what, why, and the fix>"}; every outcome is counted.
- MQTT (`[engine] mqtt_sink = "<name of an mqtt sink>"`): the request published to
  `<topic_prefix>/alert_actions` on that sink's broker (its connection settings and prefix);
  the outcome is published to `<topic_prefix>/alert_actions/result`:
  {"ok": true|false, "request": ID|null, "alert_id", "action", "error": null|"..."}. The broker's
  own authentication and ACLs guard the topic.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from typing import Any, Callable, Mapping

from carecard.host.sinks.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from carecard.host.storage import (
    ALERT_ACTIONS,
    AlertAction,
    AlertActionError,
    AlertStateError,
    StoreError,
    UnknownAlertError,
)

log = logging.getLogger("carecard.engine.inbound")

PATH = "/v1/alert-actions"
TOLERANCE_S = 300.0  # as the webhook sink's reference check (webhook.verify_signature)
MAX_BODY = 16 * 1024
MAX_HEADERS = 64
READ_TIMEOUT_S = 10.0
TOPIC = "alert_actions"
MIN_SECRET = 16


class InboundError(ValueError):
    """A request that cannot be taken: `status` (HTTP) and `reason` (the counter's label)."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason


def parse_request(body: bytes) -> tuple[str, str, str, str | None]:
    """(alert_id, action, by, reason) of a request's JSON body. Raises InboundError (400)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InboundError(400, "bad_request", f"the body is not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InboundError(400, "bad_request", "the body must be a JSON object "
                           '{"alert_id", "action", "by", "reason"}')
    unknown = sorted(set(data) - {"alert_id", "action", "by", "reason"})
    if unknown:
        raise InboundError(400, "bad_request", f"unknown key {unknown[0]!r} (keys: alert_id, action, by, reason)")
    alert_id, action, by, reason = data.get("alert_id"), data.get("action"), data.get("by"), data.get("reason")
    if not isinstance(alert_id, str) or not alert_id:
        raise InboundError(400, "bad_request", "alert_id is required: the alert's id (text)")
    if action not in ALERT_ACTIONS:
        raise InboundError(400, "bad_request", f"action must be one of {', '.join(ALERT_ACTIONS)}, got {action!r}")
    if not isinstance(by, str) or not by.strip():
        raise InboundError(400, "bad_request", "by is required: who acknowledges (non-empty text)")
    if reason is not None and not isinstance(reason, str):
        raise InboundError(400, "bad_request", "reason must be text when given")
    return alert_id, action, by, reason


def queue_request(store: Any, body: bytes, source: str) -> AlertAction:
    """Parse and queue one request. Raises InboundError with the HTTP status of each refusal."""
    alert_id, action, by, reason = parse_request(body)
    try:
        return store.request_alert_action(alert_id, action, by, reason=reason, source=source, now=time.time())
    except UnknownAlertError as exc:
        raise InboundError(404, "unknown_alert", str(exc)) from None
    except AlertStateError as exc:
        raise InboundError(409, "alert_state", str(exc)) from None
    except AlertActionError as exc:
        raise InboundError(400, "bad_request", str(exc)) from None
    except StoreError as exc:
        raise InboundError(503, "store_error", f"the request could not be stored: {exc}") from None


class SignatureCheck:
    """The webhook scheme's signature, checked with a tolerance on the timestamp and a memory of
    the signatures used within it: a replayed request is refused."""

    def __init__(self, secret: str, *, tolerance: float = TOLERANCE_S, clock: Callable[[], float] = time.time):
        self.secret = secret
        self.tolerance = tolerance
        self.clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, timestamp: str | None, signature: str | None, body: bytes) -> None:
        if not signature:
            raise InboundError(401, "missing_signature", f"missing {SIGNATURE_HEADER} header: sign the "
                               "request as the webhook sink does (docs/events.md)")
        if not timestamp:
            raise InboundError(401, "missing_signature", f"missing {TIMESTAMP_HEADER} header (Unix seconds)")
        try:
            stamp = int(timestamp)
        except ValueError:
            raise InboundError(401, "bad_timestamp", f"{TIMESTAMP_HEADER} {timestamp[:40]!r} is not Unix "
                               "seconds") from None
        now = self.clock()
        if abs(now - stamp) > self.tolerance:
            raise InboundError(401, "stale_timestamp", f"{TIMESTAMP_HEADER} is {now - stamp:+.0f} s from the "
                               f"receiver's clock (at most {self.tolerance:g} s): sign each request when "
                               "sending it, and check both clocks")
        if not hmac.compare_digest(sign(self.secret, timestamp, body), signature):
            raise InboundError(401, "bad_signature", f"{SIGNATURE_HEADER} does not match the body: the "
                               "HMAC-SHA256 of timestamp \".\" body with the shared secret, as "
                               "sha256=<hex>")
        while self._seen and next(iter(self._seen.values())) < now - self.tolerance:
            self._seen.popitem(last=False)
        if signature in self._seen:
            raise InboundError(409, "replayed", "this signed request was already received (a replay): "
                               "sign every request anew")
        self._seen[signature] = float(stamp)


class AlertActionServer:
    """POST /v1/alert-actions on a loopback (or any) address, on the receiver's event loop; the
    store writes run on a thread (they may wait for the database's write lock)."""

    def __init__(self, store: Any, secret: str, host: str, port: int, *, clock: Callable[[], float] = time.time):
        self.store = store
        self.signatures = SignatureCheck(secret, clock=clock)
        self.host = host
        self.port = port
        self.counts: Counter[str] = Counter()
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_BODY)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("alert actions: HTTP on %s:%d%s", self.host, self.port, PATH)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await asyncio.wait_for(self._handle(reader), READ_TIMEOUT_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError,
                asyncio.LimitOverrunError) as exc:
            status, body = 400, {"error": f"incomplete or oversized request: {exc.__class__.__name__}"}
            self.counts["bad_request"] += 1
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        reason = {202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                  405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
                  503: "Service Unavailable"}.get(status, "Error")
        try:
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload)
            await writer.drain()
            writer.close()
        except ConnectionError:
            pass

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
        request_line = (await reader.readline()).decode("latin-1").strip()
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = (await reader.readline()).decode("latin-1")
            if line in ("\r\n", "\n", ""):
                break
            name, _sep, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts = request_line.split()
        if len(parts) != 3 or parts[1].split("?")[0] != PATH:
            self.counts["not_found"] += 1
            return 404, {"error": f"no such path: POST {PATH}"}
        if parts[0] != "POST":
            self.counts["bad_method"] += 1
            return 405, {"error": f"{parts[0]} is not allowed: POST {PATH}"}
        try:
            length = int(headers.get("content-length", ""))
        except ValueError:
            self.counts["bad_request"] += 1
            return 400, {"error": "Content-Length is required"}
        if not 0 <= length <= MAX_BODY:
            self.counts["too_large"] += 1
            return 413, {"error": f"the body is {length} bytes; at most {MAX_BODY}"}
        body = await reader.readexactly(length)
        try:
            self.signatures.check(headers.get(TIMESTAMP_HEADER.lower()), headers.get(SIGNATURE_HEADER.lower()), body)
            request = await asyncio.get_running_loop().run_in_executor(None, queue_request, self.store, body, "http")
        except InboundError as exc:
            self.counts[exc.reason] += 1
            log.warning("alert actions: HTTP request refused (%d %s): %s", exc.status, exc.reason, exc)
            return exc.status, {"error": str(exc)}
        self.counts["accepted"] += 1
        return 202, {"request": request.id, "alert_id": request.alert_id, "action": request.action,
                     "state": "accepted"}


class MqttAlertActions:
    """Requests published to `<prefix>/alert_actions` on an MQTT sink's broker; outcomes to
    `<prefix>/alert_actions/result`. paho's network thread only queues; a worker thread stores
    and answers."""

    def __init__(self, store: Any, sink_table: Mapping[str, Any], where: str):
        from carecard.host.sinks.base import SinkTable
        from carecard.host.sinks.mqtt import DEFAULT_TOPIC_PREFIX, MqttSink

        table = SinkTable({k: v for k, v in sink_table.items()
                           if k not in ("type", "name", "batch_size", "queue_size", "retry_min", "retry_max",
                                        "start", "linger_ms")}, where)
        name = str(sink_table.get("name") or "mqtt")
        client = MqttSink.from_config(table, None, f"{name}-alert-actions")  # type: ignore[arg-type]
        if sink_table.get("client_id"):  # never the sink's own id: the broker would drop one of them
            client.client_id = f"{sink_table['client_id']}-alert-actions"
        prefix = client.topic_prefix or DEFAULT_TOPIC_PREFIX
        self.topic = f"{prefix}/{TOPIC}"
        self.result_topic = f"{self.topic}/result"
        client.subscriptions = [self.topic]
        client.received = self._received  # type: ignore[method-assign]
        self.client = client
        self.store = store
        self.counts: Counter[str] = Counter()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=10_000)
        self._thread = threading.Thread(target=self._work, name="carecard-alert-actions-mqtt", daemon=True)

    def start(self) -> None:
        self.client._start()
        self._thread.start()
        log.info("alert actions: MQTT topic %s on %s:%d", self.topic, self.client.host, self.client.port)

    def stop(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(5)
        self.client._close()

    def _received(self, topic: str, payload: bytes) -> None:
        if topic != self.topic:
            return
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.counts["overloaded"] += 1
            log.error("alert actions: MQTT request dropped: 10000 requests waiting")

    def _work(self) -> None:
        while True:
            payload = self._queue.get()
            if payload is None:
                return
            answer: dict[str, Any] = {"ok": False, "request": None, "alert_id": None, "action": None, "error": None}
            try:
                data = json.loads(payload)
                if isinstance(data, dict):
                    answer["alert_id"], answer["action"] = data.get("alert_id"), data.get("action")
            except ValueError:
                pass
            try:
                request = queue_request(self.store, payload, "mqtt")
            except InboundError as exc:
                self.counts[exc.reason] += 1
                answer["error"] = str(exc)
                log.warning("alert actions: MQTT request refused (%s): %s", exc.reason, exc)
            else:
                self.counts["accepted"] += 1
                answer.update(ok=True, request=request.id)
            try:
                self.client.publish_messages([(self.result_topic, json.dumps(answer, ensure_ascii=False).encode(),
                                               False)])
            except Exception as exc:  # the answer is a courtesy: the request itself is queued
                log.warning("alert actions: MQTT answer not published: %s", exc)
