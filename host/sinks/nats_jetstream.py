"""NATS JetStream sink (nats-py): every event published to a JetStream stream with a
de-duplication id; deliver() returns only after the stream acknowledged every event of the batch.

Subjects (`subject_prefix` defaults to `carecard.v1`, the schema version):

    <prefix>.<device>.<kind>                 e.g. carecard.v1.861234567890123.position
    <prefix>.<device>.alert.<alert_kind>     e.g. carecard.v1.861234567890123.alert.inactivity

A token that holds a character NATS reserves (`.`, `*`, `>`, white space) or anything but
letters, digits, `_` and `-` has it replaced by `_` (the protocol's kinds and devices never do).
Consume with a durable consumer on `<prefix>.>` (everything), `<prefix>.*.sos` (every SOS) or
`<prefix>.*.alert.>` (every alert).

Payload: the event as UTF-8 JSON (docs/events.md). Headers: `Nats-Msg-Id: <event id>`, so the
stream drops a second copy of an event published again within its duplicate window (after a
failover, or after a receiver restarted before it saved its cursor), and `Nats-Expected-Stream:
<stream>`, so an event never lands silently in another stream that happens to take the subject.

Delivery: a batch is published in log order on one connection without waiting between
messages; the sink then waits for every acknowledgement (at most `publish_timeout` s). The cursor
moves over the leading run of acknowledged events only; the rest is published again at the
next try and the stream's de-duplication keeps one copy. Order: a stream stores events in log
order, except around a failover, where an event after one whose publication failed may be
stored before it (`batch_size = 1` keeps strict order at one round trip per event).

Poison events: an event the server refuses for its size (larger than the server's max_payload,
or than the stream's max_msg_size) goes to the dead-letter file (JSON lines, fsynced: {
"dead_lettered_at", "sink", "stream", "subject", "reason", "event"}) and the sink moves on; any
other failure (no server, no stream leader during an election, no stream for the subject,
storage full) is retried with the runner's backoff for as long as it takes, nothing is dropped.

Stream: with `create_stream = true` (the default) the sink creates `stream` (default CARECARD)
with subjects `<prefix>.>` when it does not exist, with `replicas` (1; 3 on a three-node
cluster), `storage` ("file"), `duplicate_window` (120 s) and `max_age_days` (0: keep until the
operator's limits; the receiver's database is the archive). An existing stream is used as it is,
after checking that its subjects take `<prefix>.>`.

Keys: servers (a URL or a list, default "nats://127.0.0.1:4222"; schemes nats and tls),
subject_prefix, stream, create_stream, replicas, storage, duplicate_window, max_age_days,
publish_timeout (10 s), connect_timeout (2 s), reconnect_wait (0.5 s), username, password,
token, tls (true: system CAs, or a table {ca_file, cert_file, key_file, insecure = false}),
dead_letter (default DATA/<sink name>.deadletter.jsonl).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any, Mapping

import nats
import nats.errors
import nats.js.api
import nats.js.errors

from carecard.host.events import ALERT_KIND
from carecard.host.paths import dead_letter_path
from carecard.host.sinks.base import ConfigError, Sink, SinkError, SinkTable, SinkUnavailable, append_dead_letter
from carecard.host.sinks.mqtt import tls_options
from carecard.host.storage import LogEntry
from carecard.host.timefmt import iso_utc

log = logging.getLogger("carecard.host.sinks")

DEFAULT_SERVER = "nats://127.0.0.1:4222"
DEFAULT_SUBJECT_PREFIX = "carecard.v1"
DEFAULT_STREAM = "CARECARD"
MSG_ID_HEADER = "Nats-Msg-Id"
# JetStream API error codes that refuse one message for what it is, not the stream for its state:
# "message size exceeds maximum allowed", "header size exceeds maximum allowed"
POISON_ERR_CODES = {10054: "message size exceeds the stream's maximum",
                    10074: "headers exceed the stream's maximum"}
# publish_async waits for a free slot beyond this many acknowledgements outstanding
MAX_IN_FLIGHT = 10_000

_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def subject_token(value: Any) -> str:
    """One subject token: letters, digits, _ and -; anything else becomes _ (never empty)."""
    return _TOKEN_UNSAFE.sub("_", str(value)) or "_"


def event_subject(prefix: str, event: Mapping[str, Any]) -> str:
    """The documented subject of an event."""
    device = subject_token(event["device"])
    if event["kind"] == ALERT_KIND:
        return f"{prefix}.{device}.alert.{subject_token(event['data']['alert'])}"
    return f"{prefix}.{device}.{subject_token(event['kind'])}"


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether every subject that `subject` (which may end in `>`) matches is matched by the
    stream subject `pattern` (with `*` and `>` wildcards)."""
    want = subject.split(".")
    have = pattern.split(".")
    for index, token in enumerate(have):
        if token == ">":
            return index < len(want)
        if index >= len(want):
            return False
        if want[index] == ">":
            return False
        if token != "*" and token != want[index]:
            return False
    return len(have) == len(want)


def check_subject_prefix(table: SinkTable, key: str, prefix: str) -> None:
    """Dot-separated tokens of letters, digits, _ and -: no wildcards, no empty token."""
    tokens = prefix.split(".")
    if not prefix or any(not token or _TOKEN_UNSAFE.search(token) for token in tokens):
        raise ConfigError(table.where, key, f"{prefix!r}: use dot-separated tokens of letters, digits, "
                          "_ and - (no wildcards * >, no empty token), e.g. \"carecard.v1\"")


def server_urls(table: SinkTable) -> list[str]:
    """The `servers` key: one URL or a list; nats://host:port or tls://host:port."""
    raw = table.raw("servers", DEFAULT_SERVER)
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values:
        raise ConfigError(table.where, "servers", f"expected a URL or a list of URLs, got {raw!r}")
    urls = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigError(table.where, "servers", f"expected a URL, got {value!r}")
        try:
            parts = urllib.parse.urlsplit(value if "://" in value else f"nats://{value}")
            port = parts.port
        except ValueError as exc:
            raise ConfigError(table.where, "servers", f"{value!r}: {exc}") from None
        if parts.scheme not in ("nats", "tls") or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(table.where, "servers", f"{value!r}: expected nats://HOST:PORT or "
                              "tls://HOST:PORT (port 4222 by default)")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        urls.append(f"{parts.scheme}://{host}:{port or 4222}")
    return urls


def _ssl_context(tls: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=tls.get("ca_file"))
    if tls.get("cert_file"):
        context.load_cert_chain(tls["cert_file"], tls.get("key_file"))
    if tls.get("insecure"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class NatsSink(Sink):
    type_name = "nats"

    def __init__(self, name: str, *, servers: list[str] | None = None,
                 subject_prefix: str = DEFAULT_SUBJECT_PREFIX, stream: str = DEFAULT_STREAM,
                 create_stream: bool = True, replicas: int = 1, storage: str = "file",
                 duplicate_window: float = 120.0, max_age_days: float = 0.0,
                 publish_timeout: float = 10.0, connect_timeout: float = 2.0,
                 reconnect_wait: float = 0.5, username: str | None = None,
                 password: str | None = None, token: str | None = None,
                 tls: dict[str, Any] | None = None, dead_letter: Path):
        super().__init__(name)
        self.servers = servers or [DEFAULT_SERVER]
        self.subject_prefix = subject_prefix
        self.stream = stream
        self.create_stream = create_stream
        self.replicas = replicas
        self.storage = storage
        self.duplicate_window = duplicate_window
        self.max_age_days = max_age_days
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.username = username
        self.password = password
        self.token = token
        self.tls = tls
        self.dead_letter = dead_letter
        self._nc: Any = None  # nats.aio.client.Client
        self._js: Any = None  # nats.js.JetStreamContext
        self._stream_checked = False
        self.published = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.connects = 0
        self.disconnects = 0
        self.server: str | None = None

    @classmethod
    def from_config(cls, table: SinkTable, data_dir: Path, name: str) -> "NatsSink":
        servers = server_urls(table)
        prefix = table.str("subject_prefix", DEFAULT_SUBJECT_PREFIX) or DEFAULT_SUBJECT_PREFIX
        check_subject_prefix(table, "subject_prefix", prefix)
        stream = table.str("stream", DEFAULT_STREAM) or DEFAULT_STREAM
        if not _STREAM_NAME.match(stream):
            raise ConfigError(table.where, "stream", f"{stream!r}: a JetStream stream name is 1-64 "
                              "letters, digits, _ and - (no . * > or spaces), e.g. \"CARECARD\"")
        tls = tls_options(table)
        if tls is None and any(url.startswith("tls://") for url in servers):
            tls = {}
        username = table.str("username")
        password = table.str("password")
        token = table.str("token")
        if password is not None and username is None:
            raise ConfigError(table.where, "password", "given without a username")
        if token is not None and username is not None:
            raise ConfigError(table.where, "token", "give either a token or a username and password")
        dead = table.str("dead_letter")
        return cls(
            name, servers=servers, subject_prefix=prefix, stream=stream,
            create_stream=table.bool("create_stream", True),
            replicas=table.int("replicas", 1, minimum=1, maximum=5),
            storage=table.str("storage", "file", choices=("file", "memory")) or "file",
            duplicate_window=table.float("duplicate_window", 120.0, minimum=1, maximum=86400),
            max_age_days=table.float("max_age_days", 0.0, minimum=0, maximum=36500),
            publish_timeout=table.float("publish_timeout", 10.0, minimum=0.1, maximum=600),
            connect_timeout=table.float("connect_timeout", 2.0, minimum=0.1, maximum=600),
            reconnect_wait=table.float("reconnect_wait", 0.5, minimum=0.01, maximum=600),
            username=username, password=password, token=token, tls=tls,
            dead_letter=Path(dead) if dead else dead_letter_path(data_dir, name))

    # --- connection ---------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        log.debug("sink %s: NATS client: %s: %s", self.name, type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        self.disconnects += 1
        log.info("sink %s: disconnected from NATS %s", self.name, self.server)

    async def _on_reconnected(self) -> None:
        nc = self._nc
        self.connects += 1
        self.server = _server_name(nc)
        log.info("sink %s: reconnected to NATS %s", self.name, self.server)

    async def _connect(self) -> None:
        try:
            context = _ssl_context(self.tls) if self.tls is not None else None
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise SinkError(f"NATS TLS set-up failed: {exc}") from exc
        try:
            # max_reconnect_attempts bounds the first connection too (the runner retries it
            # with its own backoff); a connection lost later tries every server again
            nc = await nats.connect(
                servers=self.servers, name=f"carecard-{self.name}-{os.getpid()}",
                connect_timeout=self.connect_timeout,  # type: ignore[arg-type]
                reconnect_time_wait=self.reconnect_wait,  # type: ignore[arg-type]
                max_reconnect_attempts=3, allow_reconnect=True, tls=context,
                user=self.username, password=self.password, token=self.token,
                error_cb=self._on_error, disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            raise SinkUnavailable(f"NATS {', '.join(self.servers)}: cannot connect: "
                                  f"{_describe(exc)}") from None
        self._nc = nc
        self._js = nc.jetstream(timeout=self.publish_timeout, publish_async_max_pending=MAX_IN_FLIGHT)
        self.connects += 1
        self.server = _server_name(nc)
        log.info("sink %s: connected to NATS %s", self.name, self.server)

    async def _check_stream(self) -> None:
        """The stream exists (created when allowed) and takes the sink's subjects."""
        wanted = f"{self.subject_prefix}.>"
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            if not self.create_stream:
                raise SinkError(f"JetStream stream {self.stream!r} does not exist: create it with "
                                f"subjects {wanted!r} (or set create_stream = true)") from None
            config = nats.js.api.StreamConfig(
                name=self.stream, subjects=[wanted], num_replicas=self.replicas,
                storage=nats.js.api.StorageType(self.storage),
                duplicate_window=self.duplicate_window,
                max_age=self.max_age_days * 86400 or None)
            try:
                await self._js.add_stream(config)
            except nats.js.errors.APIError as exc:
                raise SinkError(f"cannot create JetStream stream {self.stream!r} with "
                                f"{self.replicas} replicas: {_describe(exc)}") from None
            log.info("sink %s: created JetStream stream %s (subjects %s, %d replicas, %s storage)",
                     self.name, self.stream, wanted, self.replicas, self.storage)
        else:
            subjects = list(info.config.subjects or [])
            if not any(subject_covers(pattern, wanted) for pattern in subjects):
                raise SinkError(f"JetStream stream {self.stream!r} takes subjects {subjects}, not "
                                f"{wanted!r}: add that subject to the stream, or set stream / "
                                "subject_prefix to match")
        self._stream_checked = True

    async def start(self) -> None:
        if self._nc is None or self._nc.is_closed:
            self._nc = self._js = None
            await self._connect()
        if not self._stream_checked:
            try:
                await self._check_stream()
            except (nats.errors.Error, asyncio.TimeoutError) as exc:
                raise SinkUnavailable(f"NATS {self.server}: JetStream not answering: {_describe(exc)}") from None

    # --- delivery -----------------------------------------------------------------------------

    async def deliver(self, events: list[dict[str, Any]]) -> None:
        await self.deliver_entries([LogEntry(0, 0.0, event) for event in events])

    async def deliver_entries(self, entries: list[LogEntry]) -> None:
        await self.start()  # a connection closed for good (all servers gone) is made again
        js = self._js
        if not self._nc.is_connected:
            raise SinkUnavailable(f"NATS {', '.join(self.servers)}: not connected (reconnecting)")
        pending: list[tuple[int, dict[str, Any], str, asyncio.Future[Any] | None]] = []
        failure: BaseException | None = None
        for index, entry in enumerate(entries):
            event = entry.event
            subject = event_subject(self.subject_prefix, event)
            payload = entry.body.encode("utf-8")
            try:
                future = await js.publish_async(subject, payload, wait_stall=self.publish_timeout,
                                                stream=self.stream,
                                                headers={MSG_ID_HEADER: str(event["id"])})
            except nats.errors.MaxPayloadError:
                pending.append((index, event, subject, None))
                continue
            except (nats.errors.Error, OSError) as exc:
                failure = exc
                break
            pending.append((index, event, subject, future))
        await self._settle(pending, failure)

    async def _settle(self, pending: list[tuple[int, dict[str, Any], str, asyncio.Future[Any] | None]],
                      failure: BaseException | None) -> None:
        """Wait for the acknowledgements in order; dead-letter poison; raise SinkError with the
        leading run of events that are in the stream (or dead-lettered) as `delivered`."""
        deadline = time.monotonic() + self.publish_timeout
        done = 0
        try:
            for index, event, subject, future in pending:
                if future is None:
                    await self._dead_letter(event, subject, "larger than the server's max_payload", done)
                    done += 1
                    continue
                try:
                    ack = await asyncio.wait_for(future, max(0.0, deadline - time.monotonic()))
                except nats.js.errors.APIError as exc:
                    reason = POISON_ERR_CODES.get(exc.err_code or 0)
                    if reason is None:
                        raise SinkUnavailable(f"NATS stream {self.stream}: {_describe(exc)} "
                                              f"({done} of {len(pending)} stored)", delivered=done) from None
                    await self._dead_letter(event, subject, f"{reason}: {exc.description}", done)
                    done += 1
                    continue
                except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError):
                    raise SinkUnavailable(
                        f"NATS: no JetStream stream answered for {subject} (no stream leader, or "
                        f"no stream {self.stream!r} takes {self.subject_prefix}.>) "
                        f"({done} of {len(pending)} stored)", delivered=done) from None
                except asyncio.TimeoutError:
                    raise SinkUnavailable(
                        f"NATS stream {self.stream}: no acknowledgement in {self.publish_timeout:g} s "
                        f"({done} of {len(pending)} stored)", delivered=done) from None
                if ack.duplicate:
                    self.duplicates += 1
                self.published += 1
                done += 1
            if failure is not None:
                raise SinkUnavailable(f"NATS {self.server}: publishing failed: {_describe(failure)} "
                                      f"({done} stored)", delivered=done)
        finally:
            for _, _, _, future in pending:
                if future is None:
                    continue
                if not future.done():
                    future.cancel()  # frees its slot; it is published again at the retry
                elif not future.cancelled():
                    future.exception()  # seen: failures after the first are published again

    async def _dead_letter(self, event: dict[str, Any], subject: str, reason: str, index: int) -> None:
        record = {"dead_lettered_at": iso_utc(time.time(), millis=True), "sink": self.name,
                  "stream": self.stream, "subject": subject, "reason": reason, "event": event}
        try:
            await self.run_io(append_dead_letter, self.dead_letter, record)
        except OSError as exc:
            raise SinkError(f"cannot write dead-letter file {self.dead_letter}: {exc}", delivered=index) from exc
        self.dead_lettered += 1
        log.error("sink %s: event %s dead-lettered to %s: %s", self.name, event.get("id"),
                  self.dead_letter, reason)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        self._stream_checked = False
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.close(), self.connect_timeout)
            except Exception as exc:  # closing must not raise
                log.debug("sink %s: closing the NATS connection: %s", self.name, exc)
        self.release_io()

    def stats(self) -> dict[str, Any]:
        nc = self._nc
        return {"connected": bool(nc is not None and nc.is_connected), "published": self.published,
                "duplicates": self.duplicates, "dead_lettered": self.dead_lettered,
                "connects": self.connects, "disconnects": self.disconnects}


def _server_name(nc: Any) -> str | None:
    url = getattr(nc, "connected_url", None)
    return f"{url.hostname}:{url.port}" if url is not None else None


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, nats.js.errors.APIError):
        return f"{exc.description or text} (code {exc.code}, error {exc.err_code})"
    if isinstance(exc, nats.errors.NoServersError):
        return "no server reachable"
    return text if text == type(exc).__name__ else f"{type(exc).__name__}: {text}"
