"""Receiver metrics and their Prometheus text exposition over a tiny asyncio HTTP server.

Counters are plain attributes and dicts bumped on the hot path (no locks: the event loop thread
owns them). Gauges are read at scrape time through callbacks. `GET /metrics` returns the text
format 0.0.4; `GET /healthz` returns `ok` (200) when the service is ready, else 503 and why.

Names (all prefixed `carecard_`): frames_received_total{transport}, frames_stored_total{type},
frames_duplicate_total, frames_rejected_total{reason}, acks_sent_total, ack_send_errors_total, acks_withheld_total,
commits_total, commit_failures_total, downlink_blocks_moved_total, commit_seconds (histogram: _bucket{le}, _sum, _count), batch_frames_sum,
commands_sent_total, commands_finished_total{state}, stream_garbage_total{transport,reason},
tcp_connections_evicted_total, event_log_pruned_total, and the gauges devices_registered, devices_seen_last_hour, sources_over_budget,
tcp_connections, commands_open, sink_queue_depth{sink}, sink_lag_events{sink},
sink_lag_seconds{sink}, sink_delivered_total{sink}, sink_failures_total{sink},
sink_dead_lettered_total{sink}, sink_up{sink}, event_log_pruned_upto, uptime_seconds, and for the
engine engine_partition_held{partition}, engine_lease_age_seconds{partition},
engine_partition_cursor{partition}, engine_lag_events{partition}.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any, Callable

log = logging.getLogger("carecard.receiver.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Upper bounds (s) of the commit latency histogram: an SQLite commit takes about a millisecond,
# a PostgreSQL one a network round trip or a few; the top buckets show a disk or a database in
# trouble (a receiver acks nothing while it waits).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class Metrics:
    """`ingest`: render the ingest's counters (a receiver); without, the gauges, the sinks' and
    the engine's families only (`carecard engine` run alone)."""

    def __init__(self, *, ingest: bool = True, process: str = "receiver") -> None:
        self.ingest = ingest
        self.process = process  # whose uptime_seconds
        self.started = time.time()
        self.frames_received: dict[str, int] = defaultdict(int)
        self.frames_stored: dict[str, int] = defaultdict(int)
        self.duplicates = 0
        self.rejected: dict[str, int] = defaultdict(int)
        self.acks_sent = 0
        self.ack_send_errors = 0
        self.acks_withheld = 0
        self.commits = 0
        self.commit_failures = 0
        self.downlink_blocks_moved = 0
        self.commit_seconds = 0.0
        self.commit_buckets = [0] * len(COMMIT_BUCKETS)  # commits that took at most each bound
        self.batch_frames = 0
        self.commands_sent = 0
        self.commands_finished: dict[str, int] = defaultdict(int)
        self.stream_garbage: dict[tuple[str, str], int] = defaultdict(int)
        self.events_pruned = 0
        self.tcp_evicted = 0
        self.gauges: dict[str, tuple[str, Callable[[], Any]]] = {}
        self.sink_stats: Callable[[], dict[str, dict[str, Any]]] | None = None
        # the engine worker's stats (engine.process.EngineWorker.stats) and the newest event log
        # seq this receiver knows of, for the engine's partitions, leases and lag
        self.engine_stats: Callable[[], dict[str, Any]] | None = None
        self.log_head: Callable[[], int] | None = None

    def observe_commit(self, seconds: float) -> None:
        """One ingest commit took `seconds`."""
        self.commits += 1
        self.commit_seconds += seconds
        buckets = self.commit_buckets
        for index, bound in enumerate(COMMIT_BUCKETS):
            if seconds <= bound:
                buckets[index] += 1
                break

    def gauge(self, name: str, help_text: str, read: Callable[[], Any]) -> None:
        self.gauges[name] = (help_text, read)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def stored_total(self) -> int:
        return sum(self.frames_stored.values())

    def snapshot(self) -> dict[str, Any]:
        """Counters as plain data (for logs, the demo and tests)."""
        return {
            "received": dict(self.frames_received), "stored": dict(self.frames_stored),
            "duplicates": self.duplicates, "rejected": dict(self.rejected),
            "acks_sent": self.acks_sent, "ack_send_errors": self.ack_send_errors,
            "acks_withheld": self.acks_withheld,
            "commits": self.commits, "commit_failures": self.commit_failures,
            "downlink_blocks_moved": self.downlink_blocks_moved,
            "commands_sent": self.commands_sent, "commands_finished": dict(self.commands_finished),
            "events_pruned": self.events_pruned, "tcp_evicted": self.tcp_evicted,
        }

    def render(self) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, Any], Any]]) -> None:
            full = f"carecard_{name}"
            out.append(f"# HELP {full} {help_text}")
            out.append(f"# TYPE {full} {kind}")
            for labels, value in samples:
                out.append(f"{full}{_labels(labels)} {_number(value)}")

        if self.ingest:
            self._render_ingest(family, out)
        for name, (help_text, read) in sorted(self.gauges.items()):
            try:
                value = read()
            except Exception:  # a gauge must never break the scrape
                log.exception("metrics gauge %s failed", name)
                continue
            family(name, "gauge", help_text, [({}, value)])
        family("uptime_seconds", "gauge", f"Seconds since the {self.process} started.",
               [({}, round(time.time() - self.started, 3))])
        if self.sink_stats is not None:
            try:
                stats = self.sink_stats()
            except Exception:
                log.exception("sink stats failed")
                stats = {}
            self._render_sinks(family, stats)
        if self.engine_stats is not None:
            try:
                engine = self.engine_stats()
                head = self.log_head() if self.log_head is not None else None
            except Exception:
                log.exception("engine stats failed")
                engine, head = {}, None
            self._render_engine(family, engine, head)
        return "\n".join(out) + "\n"

    def _render_ingest(self, family: Callable[..., None], out: list[str]) -> None:
        family("frames_received_total", "counter", "Frames read from a transport (before any check).",
               [({"transport": t}, n) for t, n in sorted(self.frames_received.items())])
        family("frames_stored_total", "counter", "Frames stored (new, authenticated), by message type.",
               [({"type": t}, n) for t, n in sorted(self.frames_stored.items())])
        family("frames_duplicate_total", "counter", "Retransmitted frames acked again, not stored again.",
               [({}, self.duplicates)])
        family("frames_rejected_total", "counter", "Frames rejected, by reason.",
               [({"reason": r}, n) for r, n in sorted(self.rejected.items())])
        family("acks_sent_total", "counter", "Acks sent (only ever for committed frames).",
               [({}, self.acks_sent)])
        family("ack_send_errors_total", "counter", "Acks that could not be sent (socket error).",
               [({}, self.ack_send_errors)])
        family("acks_withheld_total", "counter", "Duplicates from an address other than the card's "
               "last verified one not acked: the ack would be larger than the frame.",
               [({}, self.acks_withheld)])
        family("commits_total", "counter", "Ingest transactions committed.", [({}, self.commits)])
        family("commit_failures_total", "counter", "Ingest transactions that failed (nothing acked).",
               [({}, self.commit_failures)])
        family("downlink_blocks_moved_total", "counter", "Blocks of downlink counters reserved above "
               "another receiver's, which had reserved the claimed block first (shared store).",
               [({}, self.downlink_blocks_moved)])
        family("commit_seconds", "histogram", "Time an ingest commit took (the store's latency: "
               "frames are acked only after it).", [])
        cumulative = 0
        for bound, count in zip(COMMIT_BUCKETS, self.commit_buckets):
            cumulative += count
            out.append(f'carecard_commit_seconds_bucket{{le="{bound:g}"}} {cumulative}')
        out.append(f'carecard_commit_seconds_bucket{{le="+Inf"}} {self.commits}')
        out.append(f"carecard_commit_seconds_sum {_number(self.commit_seconds)}")
        out.append(f"carecard_commit_seconds_count {self.commits}")
        family("batch_frames_sum", "counter", "Frames in all committed batches (divide by commits).",
               [({}, self.batch_frames)])
        family("commands_sent_total", "counter", "Downlink commands put in acks (each attempt).",
               [({}, self.commands_sent)])
        family("commands_finished_total", "counter", "Downlink commands finished, by final state.",
               [({"state": s}, n) for s, n in sorted(self.commands_finished.items())])
        family("stream_garbage_total", "counter", "Stream framing problems (TCP, serial), by reason.",
               [({"transport": t, "reason": r}, n) for (t, r), n in sorted(self.stream_garbage.items())])
        family("tcp_connections_evicted_total", "counter", "TCP connections closed to make room for a "
               "new one (the idlest of an address at its limit, or of the address with the most).",
               [({}, self.tcp_evicted)])
        family("event_log_pruned_total", "counter", "Events other than frames' pruned from the event "
               "log after every sink delivered them (a frame's row is its archive).",
               [({}, self.events_pruned)])

    @staticmethod
    def _render_engine(family: Callable[..., None], stats: dict[str, Any], head: int | None) -> None:
        partitions = sorted((stats.get("partitions") or {}).items())
        held = [(name, p) for name, p in partitions if p.get("held")]
        family("engine_partition_held", "gauge", "1 while this engine worker holds the "
               "partition's lease, 0 while another worker does (or none).",
               [({"partition": name}, int(bool(p.get("held")))) for name, p in partitions])
        family("engine_lease_age_seconds", "gauge", "How long this worker has held the partition's "
               "lease (it restarts at 0 when the partition moved to it).",
               [({"partition": name}, p["lease_age_s"]) for name, p in held
                if isinstance(p.get("lease_age_s"), (int, float))])
        family("engine_partition_cursor", "gauge", "Event log seq the partition has handled up to "
               "(as this worker last saw it).",
               [({"partition": name}, int(p.get("cursor") or 0)) for name, p in partitions])
        if head is not None:
            family("engine_lag_events", "gauge", "Events a held partition still has to read: the "
                   "newest event log seq this receiver knows (its commits, its engine's, its sinks' "
                   "head; `carecard engine`: the log's) less the partition's cursor.",
                   [({"partition": name}, max(0, head - int(p.get("cursor") or 0))) for name, p in held])

    @staticmethod
    def _render_sinks(family: Callable[..., None], stats: dict[str, dict[str, Any]]) -> None:
        def samples(key: str) -> list[tuple[dict[str, Any], Any]]:
            found = []
            for name, s in sorted(stats.items()):
                value = s.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    found.append(({"sink": name}, value))
            return found

        family("sink_queue_depth", "gauge", "Events waiting in the sink's in-memory queue.",
               samples("queue_depth"))
        family("sink_lag_events", "gauge", "Events in the log not yet delivered to the sink.",
               samples("lag_events"))
        family("sink_lag_seconds", "gauge", "Age of the oldest event not yet delivered to the sink.",
               samples("lag_seconds"))
        family("sink_delivered_total", "counter", "Events delivered by the sink.", samples("delivered"))
        family("sink_failures_total", "counter", "Failed deliveries (retried later).", samples("failures"))
        family("sink_dead_lettered_total", "counter", "Events the sink could never deliver, written to "
               "its dead-letter file.", samples("dead_lettered"))
        family("sink_up", "gauge", "1 when the sink is delivering or idle, 0 when it is failing.",
               [({"sink": name, "state": s.get("state", "unknown")},
                 0 if str(s.get("state")) in ("failing", "down", "retrying", "stopped") else 1)
                for name, s in sorted(stats.items())])


def add_engine_gauges(metrics: Metrics, stats: Callable[[], dict[str, Any]]) -> None:
    """The engine worker's gauges, from its stats (engine.process.EngineWorker.stats: in the
    engine's process, or as its child last reported them to the receiver)."""
    def stat(key: str) -> Callable[[], int]:
        return lambda: int(stats().get(key) or 0)

    m = metrics
    m.gauge("engine_cursor", "The alert engine has handled the event log up to this seq.", stat("cursor"))
    m.gauge("engine_alerts_open", "Alerts open or acknowledged, not resolved.", stat("alerts_open"))
    m.gauge("engine_alert_events", "Alert events the engine appended to the log since start.",
            stat("alert_events"))
    m.gauge("engine_events_rejected", "Events the engine could not use (not of the schema).",
            stat("rejected"))
    m.gauge("engine_requests_done", "Acknowledge/resolve requests carried out.", stat("requests_done"))
    m.gauge("engine_requests_refused", "Acknowledge/resolve requests refused (alert not open).",
            stat("requests_refused"))
    m.gauge("engine_commit_failures", "Engine steps whose commit failed (done again from the last one).",
            stat("commit_failures"))
    m.gauge("engine_active", "1 while the alert engine runs and holds the lease of a partition (0: "
            "down, or standing by while other workers hold them all).",
            lambda: int(stats().get("state") == "active"))
    m.gauge("engine_partitions_held", "Engine partitions this worker holds (under their leases).",
            stat("partitions_held"))
    m.engine_stats = stats


class MetricsServer:
    """GET /metrics and /healthz on a loopback (or any) address. Tiny and strict: one request per
    connection, headers bounded, slow clients timed out."""

    def __init__(self, metrics: Metrics, host: str, port: int,
                 not_ready: Callable[[], str | None] | None = None):
        self.metrics = metrics
        self.host = host
        self.port = port
        # None when the service is ready, else why not: /healthz answers 503 with it
        self.not_ready = not_ready
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=8192)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _not_ready(self) -> str | None:
        if self.not_ready is None:
            return None
        try:
            return self.not_ready()
        except Exception as exc:  # a broken check must not pass for ready
            log.exception("readiness check failed")
            return f"readiness check failed: {exc}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            request = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, target = (request + ["", ""])[:2]
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", "only GET\n", "text/plain"
            elif path == "/metrics":
                status, body, ctype = "200 OK", self.metrics.render(), CONTENT_TYPE
            elif path in ("/healthz", "/"):
                reason = self._not_ready()
                if reason is None:
                    status, body, ctype = "200 OK", "ok\n", "text/plain"
                else:
                    status, body, ctype = "503 Service Unavailable", f"not ready: {reason}\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", "try /metrics\n", "text/plain"
            data = body.encode("utf-8")
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
                         f"Connection: close\r\n\r\n".encode("latin-1"))
            if method != "HEAD":
                writer.write(data)
            await asyncio.wait_for(writer.drain(), timeout=5.0)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()
