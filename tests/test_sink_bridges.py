"""The Traccar, OwnTracks and Home Assistant sinks against real peers: an HTTP server on
127.0.0.1 decoding the OsmAnd requests as Traccar does, and a real mosquitto with paho
subscribers checking payloads and retained flags, every field and unit against the formats'
documentation (docs/events.md cites it), with a Chinese name and a card without a fix."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Callable

import pytest

from carecard.host.engine.core import Notify
from carecard.host.events import event_from_message
from carecard.host.paths import ingest_db_path
from carecard.host.receiver.registry import DeviceSpec, add_devices, remove_device
from carecard.host.sinks import ConfigError, SinkSet
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.storage.sqlite.store import SQLiteStore

from brokers import Mosquitto, RawSubscriber, Subscriber

T0 = 1764374400  # 2025-11-29T00:00:00Z
CARD = "861234567890123"  # 王奶奶: fixes, battery known
NOFIX = "861234567890131"  # 李爷爷: never a fix, battery unknown
STRANGER = "861234567890149"  # not in Traccar's device list
NAME = "王奶奶"
NOFIX_NAME = "李爷爷"


def message(kind: str, counter: int, device: str = CARD, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "direction": "uplink", "device": int(device), "counter": counter,
            "time": T0 + counter * 60, "clock_synced": True, **fields}


def event(kind: str, counter: int, device: str = CARD, **fields: Any) -> dict[str, Any]:
    return event_from_message(message(kind, counter, device, **fields), T0 + counter * 60 + 1)


def status(counter: int, device: str = CARD, pct: int = 80, charging: str = "charging") -> dict[str, Any]:
    return event("status", counter, device, battery_mv=3950, battery_pct=pct, charging=charging,
                 rssi_dbm=-70, motion_count=0, outbox_depth=0)


def position(counter: int, device: str = CARD, *, fix: str = "3d", hdop_x10: int = 12) -> dict[str, Any]:
    with_fix = fix != "none"
    return event("position", counter, device, lat_e7=247000050 if with_fix else 0,
                 lon_e7=1183999950 if with_fix else 0, alt_m=30, hdop_x10=hdop_x10, sats=8, fix=fix,
                 fix_age_s=2 if with_fix else 65535, speed_cms=150, course_x10=900,
                 source="fresh")


def sos(counter: int, device: str = CARD, *, with_fix: bool = False, pct: int = 75) -> dict[str, Any]:
    return event("sos", counter, device, trigger="long_press", lat_e7=247000050 if with_fix else 0,
                 lon_e7=1183999950 if with_fix else 0, fix="3d" if with_fix else "none",
                 fix_age_s=5 if with_fix else 65535, battery_pct=pct)


def track(counter: int, device: str = CARD) -> dict[str, Any]:
    return event("track", counter, device, points=[
        {"time": T0 + counter * 60 - 30, "lat_e7": 247001000, "lon_e7": 1184001000},
        {"time": T0 + counter * 60 - 15, "lat_e7": 247002000, "lon_e7": 1184002000}],
        hdop_x10=12, sats=8)


def alert(device: str, kind: str, step: str, state: str, at: float, **details: Any) -> dict[str, Any]:
    alert_id = f"{device}-alert-{kind}-{int(T0 * 1000)}"
    return Notify(at, device, kind, alert_id, step, state, ("family",), ("+8613800138000 Son",),
                  {"opened_at": "2025-11-29T00:00:00Z", "name": NAME, **details}).event()


def registry(tmp_path: Path, cards: dict[str, str]) -> None:
    store = SQLiteStore(ingest_db_path(tmp_path))
    try:
        add_devices(store, tmp_path, [DeviceSpec(int(device), name, bytes(16)) for device, name in cards.items()])
    finally:
        store.close()


def remove_from_registry(tmp_path: Path, device: str) -> None:
    """Remove a card as `carecard devices remove` does (its name goes, the generation moves)."""
    store = SQLiteStore(ingest_db_path(tmp_path))
    try:
        remove_device(store, tmp_path, int(device))
    finally:
        store.close()


def run_sinks(tmp_path: Path, config: list[dict[str, Any]], batches: list[list[dict[str, Any]]],
              until: Callable[[], bool], between: Callable[[int], None] | None = None,
              watch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Start the sinks, append each batch to the log (calling `between(i)` after batch i was
    delivered), wait for `until`, stop; return the sinks' stats. `watch(stats)` is called at
    every look while waiting."""
    writer = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))
    eventlog = SQLiteEventLog(ingest_db_path(tmp_path))
    sinks = SinkSet.from_config(config, tmp_path, eventlog)

    async def wait(predicate: Callable[[], bool]) -> None:
        for _ in range(2000):
            if watch is not None:
                watch(sinks.stats())
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"not reached: {predicate}; stats {sinks.stats()}")

    async def main() -> dict[str, Any]:
        await sinks.start()
        for number, batch in enumerate(batches):
            head = SQLiteEventLog.append(writer, batch)
            sinks.notify(head)
            await wait(lambda: all(s["cursor"] >= head for s in sinks.stats().values()))
            if between is not None:
                between(number)
        await wait(until)
        stats = sinks.stats()
        await sinks.stop(drain_timeout=5)
        return stats

    try:
        return asyncio.run(main())
    finally:
        writer.close()
        eventlog.close()


# --- Traccar ------------------------------------------------------------------------------------


class OsmAndServer:
    """An HTTP server taking OsmAnd requests the way Traccar's OsmAndProtocolDecoder reads them:
    query parameters, or else an x-www-form-urlencoded body; 400 for an unknown `id`."""

    def __init__(self, known: set[str], *, down_after: int | None = None, port: int = 0):
        """`down_after`: after that many requests the server answers the last one, closes the
        connection and stops listening (Traccar going away)."""
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                query = urllib.parse.urlsplit(self.path).query
                params = urllib.parse.parse_qs(query or body.decode("ascii"), strict_parsing=True)
                assert all(len(values) == 1 for values in params.values()), params
                flat = {key: values[0] for key, values in params.items()}
                outer.requests.append({"params": flat, "content_type": self.headers["Content-Type"],
                                       "path": self.path})
                status = 200 if flat.get("id") in known else 400
                going = down_after is not None and len(outer.requests) >= down_after
                if going:
                    outer.server.socket.close()  # the next connection is refused
                    self.close_connection = True
                self.send_response(status)
                self.send_header("Content-Length", "0")
                if going:
                    self.send_header("Connection", "close")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_traccar_osmand_requests_carry_every_field_in_traccars_units(tmp_path: Path) -> None:
    server = OsmAndServer(known={CARD, NOFIX})
    alert_at = T0 + 9 * 60 + 30
    events = [
        status(1), position(2), position(3, fix="none"), sos(4), track(5),
        event("power", 6, event="low", battery_mv=3500, battery_pct=15),
        alert(CARD, "inactivity", "family", "open", alert_at, still_since="2025-11-28T21:00:00Z"),
        event("hello", 8, fw_major=1, fw_minor=4, fw_patch=12, reset_cause="power_on",
              config_version=3, modem="a7670", downlink_min=0,
              motion_sensor="lis2dh12"),
        position(9, hdop_x10=35),
        status(10, NOFIX, pct=255, charging="discharging"), position(11, NOFIX, fix="none"),
        status(12, STRANGER),
    ]
    try:
        stats = run_sinks(tmp_path, [{"type": "traccar", "url": server.url, "retry_min": 0.01,
                                      "retry_max": 0.05}], [events],
                          until=lambda: len(server.requests) >= 12)
    finally:
        server.close()
    got = [r["params"] for r in server.requests]
    assert all(r["content_type"] == "application/x-www-form-urlencoded" for r in server.requests)
    assert all(r["path"] == "/" for r in server.requests)
    assert got[0] == {"id": CARD, "timestamp": str(T0 + 60), "battery": "3.95", "rssi": "-70",
                      "batt": "80", "charge": "true"}
    # 1.5 m/s = 2.9157 knots; accuracy = max(25 m floor, HDOP 1.2 x 10 m); the fix 2 s old
    assert got[1] == {"id": CARD, "timestamp": str(T0 + 120 - 2), "lat": "24.700005", "lon": "118.399995",
                      "valid": "true", "accuracy": "25", "altitude": "30", "speed": "2.92",
                      "bearing": "90", "hdop": "1.2", "sat": "8", "batt": "80", "charge": "true"}
    assert got[2] == {"id": CARD, "timestamp": str(T0 + 180), "valid": "false", "batt": "80", "charge": "true"}
    assert got[3] == {"id": CARD, "timestamp": str(T0 + 240), "alarm": "sos", "sosTrigger": "long_press",
                      "batt": "75", "charge": "true"}
    assert got[4] == {"id": CARD, "timestamp": str(T0 + 300 - 30), "lat": "24.7001", "lon": "118.4001",
                      "valid": "true", "accuracy": "100", "batt": "75", "charge": "true"}
    assert got[5]["timestamp"] == str(T0 + 300 - 15) and got[5]["lat"] == "24.7002"
    assert got[6] == {"id": CARD, "timestamp": str(T0 + 360), "battery": "3.5", "powerEvent": "low",
                      "alarm": "lowBattery", "batt": "15", "charge": "true"}
    assert got[7] == {"id": CARD, "timestamp": str(alert_at), "alert": "inactivity", "alertStep": "family",
                      "alertState": "open", "alertId": f"{CARD}-alert-inactivity-{T0 * 1000}",
                      "alarm": "general", "batt": "15", "charge": "true"}
    # the hello is not sent; HDOP 3.5 makes a 35 m accuracy
    assert got[8]["timestamp"] == str(T0 + 540 - 2) and got[8]["accuracy"] == "35" and got[8]["hdop"] == "3.5"
    # a card whose battery is unknown and that has no fix: no batt, no coordinates
    assert got[9] == {"id": NOFIX, "timestamp": str(T0 + 600), "battery": "3.95", "rssi": "-70",
                      "charge": "false"}
    assert got[10] == {"id": NOFIX, "timestamp": str(T0 + 660), "valid": "false", "charge": "false"}
    assert got[11]["id"] == STRANGER and len(got) == 12
    dead = [json.loads(line) for line in (tmp_path / "traccar.deadletter.jsonl").read_text().splitlines()]
    assert [d["event"]["device"] for d in dead] == [STRANGER]
    assert dead[0]["status"] == 400 and f"identifier {STRANGER}" in dead[0]["reason"]
    assert stats["traccar"]["dead_lettered"] == 1 and stats["traccar"]["cursor"] == len(events)


def test_traccar_keeps_the_battery_across_a_restart(tmp_path: Path) -> None:
    """The last known battery level is state: after a restart a position still carries it."""
    server = OsmAndServer(known={CARD})
    config = [{"type": "traccar", "url": server.url}]
    try:
        run_sinks(tmp_path, config, [[status(1, pct=64)]], until=lambda: len(server.requests) == 1)
        run_sinks(tmp_path, config, [[position(2)]], until=lambda: len(server.requests) == 2)
    finally:
        server.close()
    assert server.requests[1]["params"]["batt"] == "64"


def test_a_traccar_track_cut_off_part_way_resumes_after_its_last_delivered_point(tmp_path: Path) -> None:
    """Traccar goes away after the first point of a track: the retry sends the points it has not
    had, not the whole track again (Traccar would store the first point twice)."""
    first = OsmAndServer(known={CARD}, down_after=1)
    config = [{"type": "traccar", "url": first.url, "retry_min": 0.01, "retry_max": 0.05}]
    again: list[OsmAndServer] = []

    def come_back(stats: dict[str, Any]) -> None:  # once the sink has failed on the stopped server
        if not again and stats["traccar"]["failures"] >= 1:
            again.append(OsmAndServer(known={CARD}, port=first.port))

    try:
        run_sinks(tmp_path, config, [[track(2), status(3)]], watch=come_back,
                  until=lambda: bool(again))
    finally:
        first.close()
        for server in again:
            server.close()
    assert [r["params"]["timestamp"] for r in first.requests] == [str(T0 + 120 - 30)]
    assert [r["params"].get("lat") for r in again[0].requests] == ["24.7002", None]
    assert again[0].requests[0]["params"]["timestamp"] == str(T0 + 120 - 15)


def test_traccar_config_errors_name_the_key(tmp_path: Path) -> None:
    eventlog = SQLiteEventLog(ingest_db_path(tmp_path), create=True)
    with pytest.raises(ConfigError, match=r"sinks\[0\] \(type \"traccar\"\), key 'url'.*5055"):
        SinkSet.from_config([{"type": "traccar", "url": "traccar.example:5055"}], tmp_path, eventlog)
    with pytest.raises(ConfigError, match="key 'secret': unknown key"):
        SinkSet.from_config([{"type": "traccar", "secret": "x" * 20}], tmp_path, eventlog)
    eventlog.close()


# --- MQTT bridges ---------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path):  # noqa: ANN201
    mosq = Mosquitto(tmp_path)
    mosq.start()
    yield mosq
    mosq.close()


def retained(port: int, topic: str, expect: Callable[[dict[str, tuple[bytes, bool]]], bool]) -> dict[str, tuple[bytes, bool]]:
    """What a subscriber arriving now gets from the broker's retained store."""
    late = RawSubscriber(port, topic, client_id="carecard-test-late")
    try:
        late.wait_for(lambda msgs: expect(late_latest(msgs)), timeout=5)
        return late.latest()
    finally:
        late.close()


def late_latest(messages: list[tuple[str, bytes, bool]]) -> dict[str, tuple[bytes, bool]]:
    return {topic: (payload, flag) for topic, payload, flag in messages}


def test_owntracks_locations_and_cards(tmp_path: Path, broker: Mosquitto) -> None:
    registry(tmp_path, {CARD: NAME, NOFIX: NOFIX_NAME})
    live = RawSubscriber(broker.port, "owntracks/#")
    base = f"owntracks/family/{CARD}"
    events = [status(1), position(2), sos(3, with_fix=True, pct=70), track(4),
              position(5, NOFIX, fix="none"), status(6, NOFIX, pct=255, charging="discharging")]
    config = [{"type": "owntracks", "host": "127.0.0.1", "port": broker.port, "user": "family",
               "registry_poll_s": 0.05, "retry_min": 0.01, "retry_max": 0.05}]
    try:
        stats = run_sinks(tmp_path, config, [events],
                          until=lambda: sum(t == base for t, _, _ in live.messages) >= 4)
        seen = list(live.messages)
    finally:
        live.close()
    payloads = [(topic, json.loads(payload.decode("utf-8"))) for topic, payload, _ in seen]
    cards = {topic: p for topic, p in payloads if topic.endswith("/info")}
    assert cards[f"{base}/info"] == {"_type": "card", "name": NAME, "tid": "王奶"}
    assert cards[f"owntracks/family/{NOFIX}/info"] == {"_type": "card", "name": NOFIX_NAME, "tid": "李爷"}
    locations = [p for topic, p in payloads if topic == base]
    # position: accuracy max(25, 1.2 x 10) m, 1.5 m/s = 5.4 km/h, course 90, fixed 2 s before
    assert locations[0] == {"_type": "location", "tid": "王奶", "tst": T0 + 120 - 2, "lat": 24.700005,
                            "lon": 118.399995, "acc": 25, "alt": 30, "vel": 5, "cog": 90, "batt": 80,
                            "bs": 2, "created_at": T0 + 121}
    assert locations[1] == {"_type": "location", "tid": "王奶", "tst": T0 + 180 - 5, "lat": 24.700005,
                            "lon": 118.399995, "acc": 100, "t": "u", "batt": 70, "bs": 2,
                            "created_at": T0 + 181}
    assert [(p["tst"], p["lat"], p["lon"], p["acc"]) for p in locations[2:]] == [
        (T0 + 240 - 30, 24.7001, 118.4001, 100), (T0 + 240 - 15, 24.7002, 118.4002, 100)]
    # the card without a fix: a card, no location at all
    assert not [t for t, _ in payloads if t == f"owntracks/family/{NOFIX}"]
    assert stats["owntracks"]["locations"] == 4 and stats["owntracks"]["cards_announced"] == 2
    # retained: a family app connecting now gets both cards and the last location
    now = retained(broker.port, "owntracks/#", lambda got: len(got) >= 3)
    assert now[f"{base}/info"][1] and now[base][1]
    assert json.loads(now[base][0])["tst"] == T0 + 240 - 15
    assert json.loads(now[f"owntracks/family/{NOFIX}/info"][0])["name"] == NOFIX_NAME
    assert f"owntracks/family/{NOFIX}" not in now


def test_a_retried_batch_carries_no_battery_level_from_a_later_event_of_it(
        tmp_path: Path, broker: Mosquitto) -> None:
    """A batch that failed is delivered again with what was known before it: a position is not
    published with the battery level of a status that came after it."""
    registry(tmp_path, {CARD: NAME})
    base = f"owntracks/carecard/{CARD}"
    live = Subscriber(broker.port, base)  # its session keeps what is published while it reconnects
    config = [{"type": "owntracks", "host": "127.0.0.1", "port": broker.port, "registry_poll_s": 0.05,
               "retry_min": 0.01, "retry_max": 0.05, "reconnect_min": 0.05, "reconnect_max": 0.1}]

    def come_back(stats: dict[str, Any]) -> None:  # once the sink has failed on the stopped broker
        if broker.proc is None and stats["owntracks"]["failures"] >= 1:
            broker.start()

    try:
        run_sinks(tmp_path, config, [[status(1, pct=90)], [position(2), status(3, pct=40), position(4)]],
                  between=lambda i: broker.stop() if i == 0 else None, watch=come_back,
                  until=lambda: len(live.messages) >= 2)
        seen = [payload for _topic, payload in live.messages]
    finally:
        live.close()
    # (the subscriber's re-subscription after the broker restart may hand the retained one again)
    assert sorted({(location["tst"], location["batt"]) for location in seen}) == [
        (T0 + 120 - 2, 90), (T0 + 240 - 2, 40)]


def test_owntracks_card_removed_from_registry_is_cleared(tmp_path: Path, broker: Mosquitto) -> None:
    registry(tmp_path, {CARD: NAME, NOFIX: NOFIX_NAME})
    config = [{"type": "owntracks", "host": "127.0.0.1", "port": broker.port, "registry_poll_s": 0.05}]
    live = RawSubscriber(broker.port, "owntracks/#")
    base = f"owntracks/carecard/{CARD}"
    try:
        run_sinks(tmp_path, config, [[position(1)], [position(2, NOFIX)]],
                  between=lambda i: remove_from_registry(tmp_path, CARD) if i == 0 else None,
                  until=lambda: (base, b"", False) in live.messages)
    finally:
        live.close()
    now = retained(broker.port, "owntracks/#", lambda got: {f"owntracks/carecard/{NOFIX}",
                                                             f"owntracks/carecard/{NOFIX}/info"} <= set(got))
    assert f"{base}/info" not in now and base not in now
    assert f"owntracks/carecard/{NOFIX}/info" in now


def _ha_topics(device: str) -> dict[str, str]:
    node = f"carecard_{device}"
    return {"tracker": f"homeassistant/device_tracker/{node}/location/config",
            "battery": f"homeassistant/sensor/{node}/battery/config",
            "problem": f"homeassistant/binary_sensor/{node}/needs_checking/config",
            "sos": f"homeassistant/event/{node}/sos/config"}


def test_home_assistant_discovery_states_alerts_and_removal(tmp_path: Path, broker: Mosquitto) -> None:
    registry(tmp_path, {CARD: NAME, NOFIX: NOFIX_NAME})
    live = RawSubscriber(broker.port, "#")
    state = f"carecard/ha/{CARD}"
    bridge = "carecard/ha/bridge/homeassistant/status"
    offline_at = T0 + 3600
    batches = [
        [status(1), position(2), sos(3), position(4, NOFIX, fix="none"),
         status(5, NOFIX, pct=255, charging="discharging")],
        [alert(CARD, "offline", "raised", "open", offline_at, reason="coverage_lost")],
        [alert(CARD, "offline", "acknowledged", "acknowledged", offline_at + 60, acknowledged_by="son")],
        [alert(CARD, "offline", "resolved", "resolved", offline_at + 120, closed_reason="reconnected"),
         alert(CARD, "sos", "raised", "open", offline_at + 180, trigger="checkin_help")],
    ]
    snapshots: list[dict[str, tuple[bytes, bool]]] = []

    def count(msgs: list[tuple[str, bytes, bool]], topic: str) -> int:
        return sum(t == topic for t, _, _ in msgs)

    # the last message each batch makes (acknowledged by the broker is not yet received here)
    batch_done = [lambda msgs: (f"{state}/battery", b"75", False) in msgs,
                  lambda msgs: count(msgs, f"{state}/availability") == 2,
                  lambda msgs: count(msgs, f"{state}/availability") == 3,
                  lambda msgs: count(msgs, f"{state}/sos") == 2]

    def between(i: int) -> None:
        assert live.wait_for(batch_done[i], 5), i
        snapshots.append(live.latest())
        if i == 3:
            remove_from_registry(tmp_path, NOFIX)

    config = [{"type": "homeassistant", "host": "127.0.0.1", "port": broker.port, "registry_poll_s": 0.05,
               "retry_min": 0.01, "retry_max": 0.05}]
    nofix = _ha_topics(NOFIX)
    try:
        stats = run_sinks(tmp_path, config, batches, between=between,
                          until=lambda: (nofix["tracker"], b"", False) in live.messages)
        seen = list(live.messages)
    finally:
        live.close()
    first = {topic: payload for topic, payload, _ in seen}
    configs = {key: json.loads(first[topic].decode("utf-8")) for key, topic in _ha_topics(CARD).items()}
    device = {"identifiers": [f"carecard_{CARD}"], "name": NAME, "manufacturer": "CareCard",
              "model": "Neighbourhood care card", "serial_number": CARD}
    both = [{"topic": bridge}, {"topic": f"{state}/availability"}]
    common = {"device": device, "origin": {"name": "CareCard receiver"}, "qos": 1}
    assert configs["tracker"] == {"name": None, "unique_id": f"carecard_{CARD}_location", **common,
                                  "json_attributes_topic": f"{state}/location", "source_type": "gps",
                                  "availability": both, "availability_mode": "all"}
    assert configs["battery"] == {"name": "Battery", "unique_id": f"carecard_{CARD}_battery", **common,
                                  "state_topic": f"{state}/battery", "device_class": "battery",
                                  "unit_of_measurement": "%", "state_class": "measurement",
                                  "availability": both, "availability_mode": "all"}
    assert configs["problem"] == {"name": "Needs checking", "unique_id": f"carecard_{CARD}_needs_checking",
                                  **common, "state_topic": f"{state}/needs_checking", "payload_on": "ON",
                                  "payload_off": "OFF", "device_class": "problem",
                                  "json_attributes_topic": f"{state}/alerts", "availability": [{"topic": bridge}]}
    assert configs["sos"] == {"name": "SOS", "unique_id": f"carecard_{CARD}_sos", **common,
                              "state_topic": f"{state}/sos", "event_types": ["sos"], "icon": "mdi:alarm-light",
                              "availability": [{"topic": bridge}]}
    # the Chinese name went out as UTF-8, not as \\u escapes
    assert NAME.encode("utf-8") in first[_ha_topics(CARD)["tracker"]]
    # states after the first batch
    after_frames = snapshots[0]
    assert json.loads(after_frames[f"{state}/location"][0]) == {
        "latitude": 24.700005, "longitude": 118.399995, "gps_accuracy": 25, "altitude": 30, "satellites": 8,
        "hdop": 1.2, "fix_time": "2025-11-29T00:01:58Z"}
    assert after_frames[f"{state}/battery"][0] == b"75"  # the SOS's own battery, after the status's 80
    assert [json.loads(p) for t, p, _ in seen if t == f"{state}/battery"][:2] == [80, 75]
    sos_events = [json.loads(p) for t, p, _ in seen if t == f"{state}/sos"]
    assert sos_events[0] == {"event_type": "sos", "trigger": "long_press", "time": "2025-11-29T00:03:00Z",
                             "battery": 75}
    assert after_frames[f"{state}/availability"][0] == b"online"
    assert after_frames[f"{state}/needs_checking"][0] == b"OFF"
    assert after_frames[bridge][0] == b"online"
    # the card without a fix and with an unknown battery: entities, but no location, no battery
    assert f"carecard/ha/{NOFIX}/location" not in after_frames
    assert f"carecard/ha/{NOFIX}/battery" not in after_frames
    assert json.loads(after_frames[nofix["tracker"]][0])["device"]["name"] == NOFIX_NAME
    # offline raised: unavailable and needs checking; acknowledged: still unavailable, no longer open
    raised, acked, resolved = snapshots[1], snapshots[2], snapshots[3]
    assert raised[f"{state}/availability"][0] == b"offline" and raised[f"{state}/needs_checking"][0] == b"ON"
    assert json.loads(raised[f"{state}/alerts"][0]) == {"alerts": [{
        "alert_id": f"{CARD}-alert-offline-{T0 * 1000}", "kind": "offline", "state": "open",
        "step": "raised", "opened_at": "2025-11-29T00:00:00Z"}]}
    assert acked[f"{state}/availability"][0] == b"offline" and acked[f"{state}/needs_checking"][0] == b"OFF"
    assert resolved[f"{state}/availability"][0] == b"online"
    # the SOS raised by a check-in answer "help" fires the event and opens the problem
    assert resolved[f"{state}/needs_checking"][0] == b"ON"
    assert sos_events[1] == {"event_type": "sos", "trigger": "checkin_help", "time": "2025-11-29T01:03:00.000Z"}
    assert stats["homeassistant"]["sos_events"] == 2
    # what Home Assistant (re)starting now gets: retained configs and states, no SOS replay;
    # the removed card's configs and states are gone
    now = retained(broker.port, "#", lambda got: _ha_topics(CARD)["sos"] in got and f"{state}/alerts" in got)
    assert all(now[topic][1] for topic in _ha_topics(CARD).values())
    assert now[f"{state}/location"][1] and now[f"{state}/battery"] == (b"75", True)
    assert f"{state}/sos" not in now
    assert not [topic for topic in now if NOFIX in topic]
    assert now[bridge] == (b"offline", True)  # the sink stopped


def test_the_mqtt_bridges_follow_a_postgresql_registry(tmp_path: Path, broker: Mosquitto, pg_cluster: Any) -> None:
    """With the receiver's store on PostgreSQL, the bridges read the registry there (names,
    removal), through the same interface as on SQLite."""
    from carecard.host.storage.postgresql import PostgreSQLEventLog, PostgreSQLStore

    url = pg_cluster.new_database()
    store = PostgreSQLStore(url)
    add_devices(store, tmp_path, [DeviceSpec(int(CARD), NAME, bytes(16)),
                                  DeviceSpec(int(NOFIX), NOFIX_NAME, bytes(16))])
    eventlog = PostgreSQLEventLog(url)
    config = [{"type": "homeassistant", "host": "127.0.0.1", "port": broker.port, "registry_poll_s": 0.05},
              {"type": "owntracks", "host": "127.0.0.1", "port": broker.port, "registry_poll_s": 0.05}]
    sinks = SinkSet.from_config(config, tmp_path, eventlog, store=url)
    live = RawSubscriber(broker.port, "#")
    tracker = _ha_topics(CARD)["tracker"]
    gone = [*_ha_topics(CARD).values(), f"owntracks/carecard/{CARD}/info", f"owntracks/carecard/{CARD}"]

    async def main() -> None:
        await sinks.start()
        head = store.append_events([status(1), position(2)])
        sinks.notify(head)
        assert await asyncio.to_thread(live.wait_for, lambda msgs: {tracker, f"owntracks/carecard/{CARD}"}
                                       <= {t for t, p, _ in msgs if p}, 20), sinks.stats()
        remove_device(store, tmp_path, int(CARD))
        assert await asyncio.to_thread(live.wait_for, lambda msgs: all((t, b"", False) in msgs for t in gone),
                                       20), sinks.stats()
        await sinks.stop(drain_timeout=5)

    try:
        asyncio.run(main())
        latest = live.latest()
    finally:
        live.close()
        eventlog.close()
        store.close()
    assert latest[tracker][0] == b""  # withdrawn
    names = {json.loads(p)["device"]["name"] for t, p, _ in live.messages if t == tracker and p}
    assert names == {NAME}
    assert json.loads(latest[f"owntracks/carecard/{NOFIX}/info"][0])["name"] == NOFIX_NAME
    assert json.loads(latest[_ha_topics(NOFIX)["tracker"]][0])["device"]["name"] == NOFIX_NAME


def test_home_assistant_bridge_goes_offline_by_last_will(tmp_path: Path, broker: Mosquitto) -> None:
    """The broker publishes the bridge's `offline` when it loses the connection (last will)."""
    from carecard.host.sinks.homeassistant import HomeAssistantSink

    registry(tmp_path, {CARD: NAME})
    sink = HomeAssistantSink("ha", data_dir=tmp_path, host="127.0.0.1", port=broker.port, keepalive=5)
    topic = "carecard/ha/bridge/ha/status"

    async def main() -> None:
        await sink.start()
        for _ in range(500):
            if sink.stats()["connected"] and sink.stats()["cards_announced"] == 1:
                break
            await asyncio.sleep(0.01)
        client = sink._client
        assert client is not None
        client._sock_close()  # the connection dies without a DISCONNECT: the broker sends the will
        sink._client = None
        client.loop_stop()
        poller = sink._poller
        assert poller is not None
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)

    asyncio.run(main())
    now = retained(broker.port, topic, lambda got: got.get(topic, (b"",))[0] == b"offline")
    assert now[topic] == (b"offline", True)


def test_bridge_config_errors_name_the_key(tmp_path: Path) -> None:
    eventlog = SQLiteEventLog(ingest_db_path(tmp_path), create=True)
    with pytest.raises(ConfigError, match=r"type \"owntracks\"\), key 'user'.*no wildcards"):
        SinkSet.from_config([{"type": "owntracks", "user": "fam+ily"}], tmp_path, eventlog)
    with pytest.raises(ConfigError, match=r"key 'user'.*one topic level"):
        SinkSet.from_config([{"type": "owntracks", "user": "a/b"}], tmp_path, eventlog)
    with pytest.raises(ConfigError, match=r"type \"homeassistant\"\), key 'discovery_prefix'"):
        SinkSet.from_config([{"type": "homeassistant", "discovery_prefix": "#"}], tmp_path, eventlog)
    with pytest.raises(ConfigError, match=r"key 'registry_poll_s'"):
        SinkSet.from_config([{"type": "homeassistant", "registry_poll_s": 0}], tmp_path, eventlog)
    eventlog.close()


def test_the_toml_examples_in_docs_configure_each_bridge(tmp_path: Path) -> None:
    """Each "See your cards in ..." section of docs/events.md has a complete TOML example that
    the receiver's configuration reader and the sinks accept as it is."""
    import re

    from carecard.host.receiver.config import config_from_mapping

    text = (Path(__file__).resolve().parent.parent / "docs" / "events.md").read_text(encoding="utf-8")
    sections = re.findall(r"### See your cards in (\w[\w ]*)\n(.*?)(?=\n### |\n## )", text, re.S)
    assert [title for title, _ in sections] == ["Traccar", "OwnTracks", "Home Assistant"]
    eventlog = SQLiteEventLog(ingest_db_path(tmp_path), create=True)
    try:
        for title, body in sections:
            blocks = re.findall(r"```toml\n(.*?)```", body, re.S)
            assert len(blocks) == 1, title
            config = config_from_mapping(tomllib.loads(blocks[0]), f"docs/events.md ({title})")
            sinks = SinkSet.from_config(config.sinks, tmp_path, eventlog)
            assert [r.sink.type_name for r in sinks.runners] == [title.lower().replace(" ", "")]
    finally:
        eventlog.close()


def _malformed(counter: int) -> dict[str, Any]:
    """A position event of another shape (fields missing): what a hand-edited or foreign log
    could hold."""
    good = position(counter)
    good["data"] = {"lat": 24.7, "lon": 118.4, "fix": "3d"}
    return good


def test_an_event_a_bridge_cannot_convert_is_skipped_counted_and_the_rest_delivered(
        tmp_path: Path, broker: Mosquitto) -> None:
    registry(tmp_path, {CARD: NAME})
    server = OsmAndServer(known={CARD})
    live = RawSubscriber(broker.port, "#")
    config = [{"type": "traccar", "url": server.url, "retry_min": 0.01, "retry_max": 0.05},
              {"type": "owntracks", "host": "127.0.0.1", "port": broker.port, "retry_min": 0.01,
               "retry_max": 0.05},
              {"type": "homeassistant", "host": "127.0.0.1", "port": broker.port, "retry_min": 0.01,
               "retry_max": 0.05}]
    try:
        # the broker's copies reach the subscriber after the bridge's publish is acknowledged
        published = {f"owntracks/carecard/{CARD}", f"carecard/ha/{CARD}/location"}
        stats = run_sinks(tmp_path, config, [[_malformed(1), position(2)]],
                          until=lambda: len(server.requests) == 1
                          and published <= {t for t, _, _ in live.messages})
        seen = list(live.messages)
    finally:
        live.close()
        server.close()
    assert server.requests[0]["params"]["timestamp"] == str(T0 + 120 - 2)
    dead = [json.loads(line) for line in (tmp_path / "traccar.deadletter.jsonl").read_text().splitlines()]
    assert [d["event"]["id"] for d in dead] == [f"{CARD}-1"] and "cannot convert" in dead[0]["reason"]
    assert [json.loads(p)["tst"] for t, p, _ in seen if t == f"owntracks/carecard/{CARD}"] == [T0 + 120 - 2]
    assert [json.loads(p)["fix_time"] for t, p, _ in seen if t == f"carecard/ha/{CARD}/location"] == [
        "2025-11-29T00:01:58Z"]
    for name in ("traccar", "owntracks", "homeassistant"):
        assert stats[name]["cursor"] == 2 and stats[name]["unconvertible"] == 1, stats[name]


def test_mqtt_bridges_publish_registered_cards_only(tmp_path: Path, broker: Mosquitto) -> None:
    """A card that is not (or no longer) in the registry gets no entities and no location: its
    events would leave retained states behind that nothing removes."""
    registry(tmp_path, {CARD: NAME})
    live = RawSubscriber(broker.port, "#")
    config = [{"type": "owntracks", "host": "127.0.0.1", "port": broker.port},
              {"type": "homeassistant", "host": "127.0.0.1", "port": broker.port}]
    try:
        stats = run_sinks(tmp_path, config, [[position(1, STRANGER), status(2, STRANGER), position(3)]],
                          until=lambda: any(t == f"carecard/ha/{CARD}/location" for t, _, _ in live.messages))
        seen = list(live.messages)
    finally:
        live.close()
    assert not [topic for topic, _, _ in seen if STRANGER in topic]
    assert stats["owntracks"]["unregistered"] == 2 and stats["homeassistant"]["unregistered"] == 2


def test_home_assistant_gets_the_discovery_again_when_it_comes_online(tmp_path: Path, broker: Mosquitto) -> None:
    """Home Assistant publishes `online` on <discovery_prefix>/status when it starts (its birth
    message); a broker without persistence has lost the retained configs by then, so the bridge
    announces every card again. A bridge that starts announces again too."""
    import paho.mqtt.client as mqtt

    registry(tmp_path, {CARD: NAME})
    config_topic = _ha_topics(CARD)["tracker"]
    live = RawSubscriber(broker.port, "homeassistant/#")
    config = [{"type": "homeassistant", "host": "127.0.0.1", "port": broker.port, "registry_poll_s": 0.05}]

    def birth(i: int) -> None:
        live.wait_for(lambda msgs: sum(t == config_topic for t, _, _ in msgs) >= 1, 5)
        ha = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="home-assistant")
        ha.connect("127.0.0.1", broker.port)
        ha.loop_start()
        ha.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
        ha.disconnect()
        ha.loop_stop()

    try:
        run_sinks(tmp_path, config, [[position(1)]], between=birth,
                  until=lambda: sum(t == config_topic for t, _, _ in live.messages) >= 2)
        run_sinks(tmp_path, config, [[position(2)]],
                  until=lambda: sum(t == config_topic for t, _, _ in live.messages) >= 3)
        seen = [json.loads(p) for t, p, _ in live.messages if t == config_topic]
    finally:
        live.close()
    assert len(seen) == 3 and all(c["device"]["name"] == NAME for c in seen)


def test_a_receiver_configured_from_toml_feeds_the_three_bridges(tmp_path: Path, broker: Mosquitto) -> None:
    """End to end: `carecard receive` with the three bridges in its TOML (sinks in their child
    process), a card's frames over UDP, each peer seeing the card under the elder's name."""
    import socket

    from receiver_helpers import Card, ReceiverProcess, key_for, run_cli

    device = int(CARD)
    store = SQLiteStore(ingest_db_path(tmp_path), readonly_lookups=False)
    try:
        add_devices(store, tmp_path, [DeviceSpec(device, NAME, key_for(device))])
    finally:
        store.close()
    server = OsmAndServer(known={CARD})
    config = tmp_path / "receiver.toml"
    config.write_text(f"""
[[sinks]]
type = "traccar"
url = "{server.url}"

[[sinks]]
type = "owntracks"
host = "127.0.0.1"
port = {broker.port}

[[sinks]]
type = "homeassistant"
host = "127.0.0.1"
port = {broker.port}
""", encoding="utf-8")
    live = RawSubscriber(broker.port, "#")
    receiver = ReceiverProcess(tmp_path, "--config", str(config))
    card = Card(device, key_for(device))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)
            for frame in (card.frame("status"), card.frame("position")):
                sock.sendto(frame, ("127.0.0.1", receiver.udp_port))
                card.ack(sock.recv(2048))
        assert live.wait_for(lambda msgs: {f"owntracks/carecard/{CARD}", f"carecard/ha/{CARD}/location"}
                             <= {t for t, _, _ in msgs}, 20)
        for _ in range(1000):
            if len(server.requests) == 2:
                break
            threading.Event().wait(0.01)
        latest = live.latest()
        # the card leaves the registry by the admin command while the receiver runs: the
        # bridges withdraw it (Home Assistant removes the entities of an empty config)
        removed = run_cli("devices", "remove", CARD, "--data", str(tmp_path))
        assert removed.returncode == 0, removed.stderr
        gone = [*_ha_topics(CARD).values(), f"owntracks/carecard/{CARD}/info", f"owntracks/carecard/{CARD}"]
        assert live.wait_for(lambda msgs: all((topic, b"", False) in msgs for topic in gone), 20), live.latest()
    finally:
        code, err = receiver.terminate()
        live.close()
        server.close()
    assert code == 0, err
    ha_config = json.loads(latest[_ha_topics(CARD)["tracker"]][0].decode("utf-8"))
    assert ha_config["device"]["name"] == NAME
    assert json.loads(latest[f"carecard/ha/{CARD}/location"][0])["latitude"] == 24.9012345
    assert latest[f"carecard/ha/{CARD}/battery"][0] == b"81"
    assert json.loads(latest[f"owntracks/carecard/{CARD}/info"][0])["name"] == NAME
    location = json.loads(latest[f"owntracks/carecard/{CARD}"][0])
    assert (location["lat"], location["batt"]) == (24.9012345, 81)
    assert [r["params"].get("lat") for r in server.requests] == [None, "24.9012345"]
    assert server.requests[1]["params"]["batt"] == "81"
    # nothing of it is retained for a Home Assistant or OwnTracks app that connects now
    now = retained(broker.port, "#", lambda got: "carecard/ha/bridge/homeassistant/status" in got)
    assert now["carecard/ha/bridge/homeassistant/status"] == (b"offline", True)
    assert not [topic for topic in now if CARD in topic]
