"""Every "unknown" value of the protocol, end to end: frame -> receiver ingest -> event log ->
SQLite query store -> `carecard events` and the track exports (GeoJSON, GPX, CSV).

The unknown values are data in protocol/spec.py (FIELDS); nothing here lists them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import gpxpy
import pytest

from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.export import export_track
from carecard.host.paths import events_db_path, ingest_db_path
from carecard.host.sinks import SinkSet
from carecard.protocol import spec

from receiver_helpers import BASE_TIME, POSITION, STATUS, Card, Harness, provision

SOS = {"trigger": "fall", "lat_e7": 247200000, "lon_e7": 1184200000, "fix": "3d", "fix_age_s": 30,
       "battery_pct": 40}
POWER = {"event": "low", "battery_mv": 3400, "battery_pct": 9}
TRACK = {"points": [{"time": BASE_TIME - 60, "lat_e7": 247100000, "lon_e7": 1184100000},
                    {"time": BASE_TIME - 30, "lat_e7": 247100500, "lon_e7": 1184100500}],
         "hdop_x10": 12, "sats": 8}
VALID = {"position": POSITION, "status": STATUS, "sos": SOS, "power": POWER, "track": TRACK}


def _sentinel_cases() -> list[tuple[str, str, int]]:
    """(message type, field, unknown value) for every field of an uplink message with one."""
    cases = []
    for _code, name, fields in spec.UPLINK:
        for field, _kind, _doc in fields:
            unknown = spec.FIELDS.get(field, {}).get("unknown")
            if unknown is not None:
                cases.append((name, field, unknown))
    return cases


def _through_the_receiver(data_dir: Path, messages: list[dict[str, Any]]) -> tuple[int, list[bytes]]:
    """Each message as a frame through the real ingest into the log, then the default sinks
    (the SQLite query store) until delivered. Returns the device and the acks."""
    devices = provision(data_dir)
    device, key = next(iter(devices.items()))
    card = Card(device, key)
    harness = Harness(data_dir, devices)
    for message in messages:
        assert harness.feed(card.frame(**message)) is None
    acks = harness.commit()
    harness.store.close()

    async def deliver() -> None:
        sinks = SinkSet.from_config(None, data_dir, SQLiteEventLog(ingest_db_path(data_dir)))
        await sinks.start()
        await sinks.stop(drain_timeout=10)

    asyncio.run(deliver())
    return device, acks


def _events(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[int, dict[str, Any]]:
    from carecard.host.cli import main

    assert main(["events", "--data", str(data_dir)]) == 0
    return {event["counter"]: event for event in map(json.loads, capsys.readouterr().out.splitlines())}


def _exports(data_dir: Path, device: int) -> dict[str, Any]:
    out = {}
    for fmt in ("geojson", "gpx", "csv"):
        text, _count = export_track(data_dir, str(device), fmt)
        out[fmt] = text
    return out


def test_a_stale_fix_is_never_stored_as_a_current_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """fix_age_s = 65535 says the fix is older than 18 hours or there is none: its time is not
    known, so it is no point of the track (it would be placed at the message's time); the event
    keeps the position with fix_age_s null."""
    fresh = {"mtype": "position", "counter": 1, **POSITION}
    stale = {"mtype": "position", "counter": 2, **POSITION, "lat_e7": 240000000, "fix_age_s": 65535}
    device, acks = _through_the_receiver(tmp_path, [fresh, stale])
    assert len(acks) == 2
    events = _events(tmp_path, capsys)
    assert events[2]["data"]["fix_age_s"] is None and events[2]["data"]["lat"] == 24.0
    with sqlite3.connect(events_db_path(tmp_path)) as store:
        rows = store.execute("SELECT event_id, t FROM positions ORDER BY t").fetchall()
    assert rows == [(f"{device}-1", float(BASE_TIME + 1 - POSITION["fix_age_s"]))]
    exported = _exports(tmp_path, device)
    geo = json.loads(exported["geojson"])
    assert [f["properties"]["event_id"] for f in geo["features"]] == [f"{device}-1"]
    assert [len(s.points) for t in gpxpy.parse(exported["gpx"]).tracks for s in t.segments] == [1]
    assert [row["event_id"] for row in csv.DictReader(io.StringIO(exported["csv"]))] == [f"{device}-1"]


def test_every_unknown_value_of_the_spec_is_covered_here() -> None:
    """The cases below come from spec.FIELDS; a message type with an unknown value needs a valid
    message here to carry it."""
    cases = _sentinel_cases()
    assert {(kind, field) for kind, field, _u in cases} >= {("position", "fix_age_s"), ("sos", "fix_age_s"),
                                                             ("position", "hdop_x10"), ("status", "rssi_dbm")}
    assert {kind for kind, _f, _u in cases} <= set(VALID)


@pytest.mark.parametrize("kind, field, unknown", _sentinel_cases(),
                         ids=[f"{k}.{f}" for k, f, _u in _sentinel_cases()])
def test_an_unknown_value_is_null_from_the_frame_to_the_stored_row_and_the_exports(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, field: str, unknown: int) -> None:
    from carecard.host.sinks.sqlite_store import POSITION_COLUMNS

    known = {"mtype": kind, "counter": 1, **VALID[kind]}
    message = {**known, "counter": 2, field: unknown}
    device, acks = _through_the_receiver(tmp_path, [known, message])
    assert len(acks) == 2
    twin = (spec.FIELDS[field].get("human") or (None,))[0]

    event = _events(tmp_path, capsys)[2]["data"]
    assert event[field] is None
    if twin is not None:
        assert event[twin] is None
    before = _events(tmp_path, capsys)[1]["data"]
    assert before[field] == VALID[kind][field]  # the valid message keeps its value

    with sqlite3.connect(events_db_path(tmp_path)) as store:
        assert store.execute("SELECT COUNT(*) FROM events WHERE id = ?", (f"{device}-2",)).fetchone()[0] == 1
        rows = store.execute(f"SELECT event_id, {', '.join(POSITION_COLUMNS)} FROM positions "
                             "ORDER BY event_id").fetchall()
    if kind == "track":  # its accuracy is the event's (null above); the points are stored
        assert len(rows) == 2 * len(TRACK["points"])
        return
    if kind not in ("position", "sos"):
        assert rows == []
        return
    column = twin if twin in POSITION_COLUMNS else field if field in POSITION_COLUMNS else None
    exported = _exports(tmp_path, device)
    geo = {f["properties"]["event_id"]: f["properties"] for f in json.loads(exported["geojson"])["features"]
           if f["geometry"]["type"] == "Point"}
    gpx = [p for t in gpxpy.parse(exported["gpx"]).tracks for s in t.segments for p in s.points]
    table = {row["event_id"]: row for row in csv.DictReader(io.StringIO(exported["csv"]))}
    if field == "fix_age_s":  # the fix's time is not known: no point of the track
        assert [row[0] for row in rows] == [f"{device}-1"]
        assert list(geo) == list(table) == [f"{device}-1"] and len(gpx) == 1
        return
    assert [row[0] for row in rows] == [f"{device}-1", f"{device}-2"]
    if column is None:  # not a column of the track (sos battery): the event holds it, null
        return
    stored = dict(zip(POSITION_COLUMNS, rows[1][1:]))
    assert stored[column] is None and dict(zip(POSITION_COLUMNS, rows[0][1:]))[column] is not None
    assert geo[f"{device}-2"][column] is None and geo[f"{device}-1"][column] is not None
    assert table[f"{device}-2"][column] == "" and table[f"{device}-1"][column] != ""
    if column == "hdop":  # GPX has an element for it: left out when unknown
        assert gpx[0].horizontal_dilution is not None and gpx[1].horizontal_dilution is None
