"""HTTP webhook sink: one POST per event, signed, retried, dead-lettered.

Request (one event per request, in log order; the next event is sent only after the previous one
was accepted or dead-lettered):

    POST <url>
    Content-Type: application/json
    X-CareCard-Event-Id: <event id>          (de-duplicate on it: delivery is at-least-once)
    X-CareCard-Schema: 1
    X-CareCard-Timestamp: <Unix seconds when this attempt was signed>
    X-CareCard-Signature: sha256=<hex>

    body: the event as UTF-8 JSON (docs/events.md)

    signature = HMAC-SHA256(key = secret as UTF-8,
                            message = timestamp as ASCII + "." + raw body bytes), lower-case hex

A receiver recomputes the HMAC over the raw body, compares in constant time, and rejects requests
whose timestamp is more than a few minutes from its clock (replays). `verify_signature` below is
a reference implementation.

Responses: any 2xx accepts the event. 5xx, 408, 429 (Retry-After honoured up to retry_max),
timeouts and connections broken mid-request are retried with exponential backoff and jitter
(retry_min doubling to retry_max) up to `max_retries` times; after the last retry the event is
written to the dead-letter file and the sink moves on to the next event. Other 4xx (and 3xx:
redirects are not followed) go to the dead-letter file at once: a poisoned event never blocks the
ones after it. When the endpoint cannot be reached at all (connection refused, unknown host,
connect timeout) nothing is dead-lettered: the webhook is down, the runner keeps the events in
the log and retries with backoff for as long as it takes.

Dead-letter file (JSON lines, appended and fsynced): {"dead_lettered_at", "sink", "url",
"attempts", "reason", "status", "event"}; default DATA/<sink name>.deadletter.jsonl.

Keys: url (required, http or https), secret (required, at least 16 characters), timeout (10 s),
max_retries (5), dead_letter (path), headers (table of extra headers), retry_min, retry_max
(the common keys: also the runner's backoff).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import logging
import socket
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

from carecard.host.events import SCHEMA_VERSION
from carecard.host.timefmt import iso_utc
from carecard.host.paths import dead_letter_path
from carecard.host.sinks.base import (
    DEFAULT_RETRY_MAX,
    DEFAULT_RETRY_MIN,
    ConfigError,
    append_dead_letter,
    Sink,
    SinkError,
    SinkTable,
    SinkUnavailable,
    backoff_delay,
)

log = logging.getLogger("carecard.host.sinks")

SIGNATURE_HEADER = "X-CareCard-Signature"
TIMESTAMP_HEADER = "X-CareCard-Timestamp"
EVENT_ID_HEADER = "X-CareCard-Event-Id"
SCHEMA_HEADER = "X-CareCard-Schema"
USER_AGENT = "carecard-webhook/1"
MIN_SECRET = 16


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The X-CareCard-Signature value: sha256=<hex of HMAC-SHA256(secret, timestamp "." body)>."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str | bytes, timestamp: str, signature: str, body: bytes, *,
                     tolerance: float = 300.0, now: float | None = None) -> bool:
    """Reference check for integrators: right HMAC and a timestamp within `tolerance` seconds."""
    try:
        stamp = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - stamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class _Unreachable(Exception):
    """The endpoint cannot be reached (nothing was sent)."""


class _Transient(Exception):
    """The request was sent but no usable answer came (timeout, connection broken)."""


class WebhookSink(Sink):
    type_name = "webhook"

    def __init__(self, name: str, url: str, secret: str, *, timeout: float = 10.0,
                 max_retries: int = 5, dead_letter: Path, headers: Mapping[str, str] | None = None,
                 retry_min: float = DEFAULT_RETRY_MIN, retry_max: float = DEFAULT_RETRY_MAX):
        super().__init__(name)
        parts = urllib.parse.urlsplit(url)
        self.url = url
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._secret = secret.encode("utf-8")
        self.timeout = timeout
        self.max_retries = max_retries
        self.dead_letter = dead_letter
        self.headers = dict(headers or {})
        self.retry_min = retry_min
        self.retry_max = retry_max
        self._conn: http.client.HTTPConnection | None = None
        self.posted = 0
        self.retries = 0
        self.dead_lettered = 0

    @classmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "WebhookSink":
        url = table.str("url", required=True)
        assert url is not None
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(table.where, "url", f"{url!r}: expected an http:// or https:// URL")
        try:
            parts.port
        except ValueError:
            raise ConfigError(table.where, "url", f"{url!r}: bad port") from None
        secret = table.str("secret", required=True)
        assert secret is not None
        if len(secret) < MIN_SECRET:
            raise ConfigError(table.where, "secret", f"at least {MIN_SECRET} characters (got {len(secret)})")
        headers_raw = table.raw("headers", {})
        if not isinstance(headers_raw, dict) or not all(
                isinstance(k, str) and isinstance(v, str) and "\n" not in k + v and "\r" not in k + v
                for k, v in headers_raw.items()):
            raise ConfigError(table.where, "headers", "expected a table of text header values")
        dead = table.str("dead_letter")
        return cls(
            name, url, secret,
            timeout=table.float("timeout", 10.0, minimum=0.05, maximum=600),
            max_retries=table.int("max_retries", 5, minimum=0, maximum=1000),
            dead_letter=Path(dead) if dead else dead_letter_path(data_dir, name),
            headers=headers_raw,
            retry_min=table.float("retry_min", DEFAULT_RETRY_MIN, minimum=0.001, maximum=3600),
            retry_max=table.float("retry_max", DEFAULT_RETRY_MAX, minimum=0.001, maximum=86400),
        )

    # --- HTTP (worker thread) ----------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._scheme == "https":
                self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout,
                                                         context=ssl.create_default_context())
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        if self._conn.sock is None:  # new, or closed by a "Connection: close" response
            try:
                self._conn.connect()
            except OSError as exc:  # refused, unreachable, DNS failure, connect timeout, TLS
                self._drop()
                raise _Unreachable(f"{type(exc).__name__}: {exc}") from None
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def request_headers(self, body: bytes, event_id: str) -> dict[str, str]:
        """The headers of one attempt (signed at the time of the attempt)."""
        timestamp = str(int(time.time()))
        return {
            **self.headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: event_id,
            SCHEMA_HEADER: str(SCHEMA_VERSION),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }

    def _post(self, body: bytes, event_id: str) -> tuple[int, str, str | None]:
        """One POST; returns (status, start of the response body, Retry-After)."""
        for fresh in (False, True):
            reused = self._conn is not None and self._conn.sock is not None and not fresh
            conn = self._connection()
            headers = self.request_headers(body, event_id)
            try:
                conn.request("POST", self._target, body=body, headers=headers)
                response = conn.getresponse()
                text = response.read(65536).decode("utf-8", "replace")
                if not response.isclosed():  # body longer than we read, or a closing server
                    self._drop()
                return response.status, text[:300], response.getheader("Retry-After")
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop()
                if reused:  # a kept-alive connection the server had closed: retry once at once
                    continue
                raise _Transient(f"{type(exc).__name__}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:  # socket.timeout is an OSError
                self._drop()
                what = "timed out" if isinstance(exc, socket.timeout) else f"{type(exc).__name__}: {exc}"
                raise _Transient(what) from None
        raise AssertionError("unreachable")

    # --- delivery ----------------------------------------------------------------------------

    def request_bodies(self, event: dict[str, Any]) -> list[bytes]:
        """The request bodies that deliver one event, in order (the webhook: one, its JSON)."""
        return [json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")]

    def explain_rejection(self, status: int, text: str, event: dict[str, Any]) -> str:
        """The dead-letter reason for a 4xx answer."""
        return f"HTTP {status}: {text.strip()[:200]}"

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        for index, event in enumerate(events):
            for body in self.request_bodies(event):
                if not await self._send(event, index, body):
                    break

    async def _send(self, event: dict[str, Any], index: int, body: bytes) -> bool:
        """One request with its retries; False when it was dead-lettered."""
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                status, text, retry_after_raw = await self.run_io(self._post, body, event["id"])
            except _Unreachable as exc:
                raise SinkUnavailable(f"{self.type_name} {self.url} unreachable: {exc}", delivered=index) from None
            except _Transient as exc:
                status, reason = None, str(exc)
            else:
                if 200 <= status < 300:
                    self.posted += 1
                    return True
                reason = f"HTTP {status}: {text.strip()[:200]}"
                if status not in (408, 429) and status < 500:
                    await self._dead_letter(event, index, attempt,
                                            self.explain_rejection(status, text, event), status)
                    return False
                if retry_after_raw and retry_after_raw.strip().isdigit():
                    retry_after = min(float(retry_after_raw.strip()), self.retry_max)
            if attempt > self.max_retries:
                await self._dead_letter(event, index, attempt, f"gave up after {attempt} attempts: {reason}",
                                        status)
                return False
            self.retries += 1
            delay = retry_after if retry_after is not None else backoff_delay(
                attempt, self.retry_min, self.retry_max)
            log.warning("sink %s: event %s not accepted (%s), attempt %d of %d, retrying in %.2f s",
                        self.name, event["id"], reason, attempt, self.max_retries + 1, delay)
            await asyncio.sleep(delay)

    async def _dead_letter(self, event: dict[str, Any], index: int, attempts: int, reason: str,
                           status: int | None) -> None:
        record = {"dead_lettered_at": iso_utc(time.time(), millis=True), "sink": self.name,
                  "url": self.url, "attempts": attempts, "reason": reason, "status": status,
                  "event": event}
        try:
            await self.run_io(append_dead_letter, self.dead_letter, record)
        except OSError as exc:  # keep the event in the log rather than lose it
            raise SinkError(f"cannot write dead-letter file {self.dead_letter}: {exc}", delivered=index) from exc
        self.dead_lettered += 1
        log.error("sink %s: event %s dead-lettered to %s: %s", self.name, event["id"], self.dead_letter, reason)

    async def close(self) -> None:
        try:
            await self.run_io(self._drop)
        finally:
            self.release_io()

    def stats(self) -> dict[str, Any]:
        return {"posted": self.posted, "retries": self.retries, "dead_lettered": self.dead_lettered}
