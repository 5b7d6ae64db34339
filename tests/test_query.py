"""The SQLite query store and `carecard track` / `carecard events`: exports that geojson and gpxpy
parse, time ranges, idempotent storage, and one clear line for every bad argument."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import sqlite3
from pathlib import Path

import geojson
import gpxpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carecard.host.cli import main
from carecard.host.storage.sqlite.eventlog import SQLiteEventLog
from carecard.host.events import alert_event, event_from_message
from carecard.host.export import export_track
from carecard.host.paths import events_db_path, ingest_db_path
from carecard.host.sinks import SinkError, SinkSet, SQLiteSink

from eventgen import DEVICE, T0, position_message, status_event

OTHER = 869999000011112


def _msg(kind: str, counter: int, **fields) -> dict:  # noqa: ANN003
    return {"type": kind, "direction": "uplink", "device": DEVICE, "counter": counter,
            "time": T0 + counter * 60, "clock_synced": True, **fields}


def _scenario() -> list[dict]:
    events = [event_from_message(position_message(n), T0 + n * 60 + 1) for n in range(1, 11)]
    events.append(event_from_message(_msg("track", 11, points=[
        {"time": T0 + 700 + i * 10, "lat_e7": 247100000 + i * 100, "lon_e7": 1184100000} for i in range(5)],
        hdop_x10=12, sats=8),
        T0 + 800))
    events.append(event_from_message(_msg("sos", 12, trigger="long_press", lat_e7=247200000,
                                          lon_e7=1184200000, fix="3d", fix_age_s=30, battery_pct=40), T0 + 721))
    events.append(event_from_message(_msg("sos", 13, trigger="fall", lat_e7=0, lon_e7=0, fix="none",
                                          fix_age_s=65535, battery_pct=255), T0 + 781))
    events.append(event_from_message(position_message(14) | {"fix": "none"}, T0 + 841))
    # clock not synced: time is seconds since boot, the store estimates from received_at
    events.append(event_from_message(position_message(15, t=120, synced=False), T0 + 5000.0))
    events.append(status_event(16))
    events.append(alert_event(DEVICE, "inactivity", {"still_for_s": 43200}, T0 + 6000))
    events.append(event_from_message(position_message(1, device=OTHER), T0 + 61))
    return events


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder filled the real way: event log -> SinkSet -> SQLite sink."""
    data = tmp_path_factory.mktemp("data")
    writer = SQLiteEventLog.connect_writer(ingest_db_path(data))
    SQLiteEventLog.append(writer, _scenario())

    async def run() -> None:
        sinks = SinkSet.from_config(None, data, SQLiteEventLog(ingest_db_path(data)))
        await sinks.start()
        await sinks.stop(drain_timeout=5)

    asyncio.run(run())
    return data


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_store_tables(data_dir: Path) -> None:
    store = sqlite3.connect(events_db_path(data_dir))
    assert store.execute("SELECT COUNT(*) FROM events").fetchone()[0] == len(_scenario())
    sources = store.execute("SELECT source, COUNT(*) FROM positions WHERE device = ? GROUP BY source",
                            (str(DEVICE),)).fetchall()
    assert dict(sources) == {"position": 11, "track": 5, "sos": 1}  # no-fix sos/position left out
    assert store.execute("SELECT alert, details FROM alerts").fetchall() == [("inactivity", '{"still_for_s":43200}')]
    sos_t = store.execute("SELECT t FROM positions WHERE source = 'sos'").fetchone()[0]
    assert sos_t == T0 + 12 * 60 - 30  # the fix time: message time minus fix_age_s
    est = store.execute("SELECT t, time_estimated FROM positions WHERE event_id = ?",
                        (f"{DEVICE}-15",)).fetchone()
    assert est == (T0 + 5000.0 - 2, 1)
    plans = " ".join(r[-1] for r in store.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM positions WHERE device = '1' AND t BETWEEN 0 AND 1"))
    assert "positions_device_t" in plans


def test_sqlite_sink_is_idempotent(tmp_path: Path) -> None:
    sink = SQLiteSink("sqlite", events_db_path(tmp_path))
    events = _scenario()

    async def run() -> None:
        await sink.start()
        await sink.deliver(events)
        await sink.deliver(events[3:])  # at-least-once: a batch delivered again
        await sink.close()

    asyncio.run(run())
    store = sqlite3.connect(events_db_path(tmp_path))
    assert store.execute("SELECT COUNT(*) FROM events").fetchone()[0] == len(events)
    assert store.execute("SELECT COUNT(*) FROM positions").fetchone()[0] == 18
    assert store.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 1


def _deliver_log(data_dir: Path) -> dict:
    """Run the default sinks (the SQLite store) over the event log in `data_dir` until it is
    delivered; the SQLite sink's stats."""
    async def run() -> dict:
        sinks = SinkSet.from_config(None, data_dir, SQLiteEventLog(ingest_db_path(data_dir)))
        await sinks.start()
        await sinks.stop(drain_timeout=10)
        return sinks.stats()["sqlite"]

    return asyncio.run(run())


def _dump(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as store:
        return {table: store.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
                for table in ("events", "positions", "alerts")}


def test_sqlite_sink_large_batches_from_the_log_match_event_by_event_delivery(tmp_path: Path) -> None:
    """Batches of hundreds of events from the log (multi-row inserts, the log's own JSON) store
    exactly what delivering the events one at a time stores; a batch repeating events and
    holding malformed ones stores each good event once and counts the bad ones."""
    rng = __import__("random").Random(5)
    events = _scenario()
    for n in range(100, 700):
        message = position_message(n, device=OTHER + n % 7)
        if n % 5 == 0:
            message["fix"] = "none"
        events.append(event_from_message(message, T0 + n * 60 + rng.random()))
    events += _scenario()[:4]  # repeats (a re-delivery): the sink stores each event once
    log_dir, one_dir = tmp_path / "log", tmp_path / "one"
    writer = SQLiteEventLog.connect_writer(ingest_db_path(log_dir))
    SQLiteEventLog.append(writer, events)

    async def one_by_one() -> int:
        sink = SQLiteSink("sqlite", events_db_path(one_dir))
        await sink.start()
        for event in events:
            await sink.deliver([event])
        bad = [{"id": "x-1"}, "not an event", None, {"id": "x-2", "kind": "position", "device": "1",
                                                     "time": None, "received_at": "yesterday", "data": {}}]
        await sink.deliver(bad + events[:50] + bad)  # again, with malformed events around
        await sink.close()
        return sink.malformed

    stats = _deliver_log(log_dir)
    assert stats["delivered"] == len(events) and stats["malformed"] == 0  # the repeats too
    assert asyncio.run(one_by_one()) == 8
    by_log, by_one = _dump(events_db_path(log_dir)), _dump(events_db_path(one_dir))
    assert by_log == by_one
    assert len(by_log["events"]) == len(events) - 4 and len(by_log["positions"]) > 450
    with sqlite3.connect(ingest_db_path(log_dir)) as conn:  # the body is the log's own text
        logged = dict(conn.execute("SELECT event_id, body FROM event_log").fetchall())
    assert all(row[6] == logged[row[0]] for row in by_log["events"])


def test_track_geojson(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _cli(capsys, "track", str(DEVICE), "--format", "geojson", "--data", str(data_dir))
    assert status == 0 and err == ""
    collection = geojson.loads(out)
    assert collection.is_valid and collection["type"] == "FeatureCollection"
    line, *points = collection["features"]
    assert line["geometry"]["type"] == "LineString" and len(line["geometry"]["coordinates"]) == 17
    assert len(points) == 17 and all(p["geometry"]["type"] == "Point" for p in points)
    first = points[0]
    assert first["geometry"]["coordinates"] == [118.399999, 24.700001]  # [lon, lat]
    assert first["properties"]["time"] == "2025-11-29T00:00:58Z" and first["properties"]["hdop"] == 1.2
    times = [p["properties"]["time"] for p in points]
    assert times == sorted(times)


def test_track_gpx_with_a_time_range(data_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "track.gpx"
    status, out, err = _cli(capsys, "track", str(DEVICE), "--format", "gpx", "--data", str(data_dir),
                            "--since", "2025-11-29T00:05:00Z", "--until", "2025-11-29T00:11:40", "-o", str(out_file))
    assert status == 0 and out == "" and "positions written" in err
    gpx = gpxpy.parse(out_file.read_text())
    points = gpx.tracks[0].segments[0].points
    stamps = [p.time.timestamp() for p in points]
    assert stamps and min(stamps) >= T0 + 300 and max(stamps) <= T0 + 700
    assert len(points) == 7  # positions 6-10 (fixes at :58), the sos fix at 11:30, the first track point at 11:40
    assert points[0].elevation == 30 and points[0].satellites == 8 and points[0].horizontal_dilution == 1.2
    assert points[-1].latitude == pytest.approx(24.71)
    # a track frame's point has only time, latitude and longitude (docs/events.md)
    assert points[-1].elevation is None and points[-1].satellites is None and points[-1].type_of_gpx_fix is None
    assert points[-2].elevation is None and points[-2].type_of_gpx_fix == "3d"  # the SOS: a fix only


def test_track_csv(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _cli(capsys, "track", str(OTHER), "--format", "csv", "--data", str(data_dir))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert status == 0 and len(rows) == 1
    assert rows[0]["device"] == str(OTHER) and rows[0]["lat"] == "24.7000010" and rows[0]["fix"] == "3d"


def test_events_command(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _cli(capsys, "events", "--data", str(data_dir))
    everything = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and len(everything) == len(_scenario())
    status, out, _ = _cli(capsys, "events", str(DEVICE), "--kind", "sos", "--data", str(data_dir))
    assert [e["counter"] for e in map(json.loads, out.splitlines())] == [12, 13]
    status, out, _ = _cli(capsys, "events", str(DEVICE), "--limit", "2", "--data", str(data_dir))
    last_two = [json.loads(line) for line in out.splitlines()]
    assert [e["kind"] for e in last_two] == ["position", "alert"]  # the estimated-time one is latest-but-one
    status, out, _ = _cli(capsys, "events", "--kind", "alert", "--since", "2025-11-29", "--data", str(data_dir))
    assert [e["data"]["alert"] for e in map(json.loads, out.splitlines())] == ["inactivity"]


@pytest.mark.parametrize("argv, message", [
    (["track", str(DEVICE), "--since", "last tuesday"], "is not an ISO 8601"),
    (["track", "123456", "--format", "csv"], "unknown device 123456"),
    (["track", "IMEI-1"], "no device named 'IMEI-1': give the IMEI or a registered name"),
    (["track", str(DEVICE), "--since", "2025-12-01", "--until", "2025-11-01"], "--since is after --until"),
    (["events", "--limit", "0"], "--limit must be at least 1"),
    (["events", "42"], "unknown device 42"),
])
def test_bad_arguments_give_one_line(data_dir: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                     message: str) -> None:
    status, out, err = _cli(capsys, *argv, "--data", str(data_dir))
    assert status != 0 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_data_folder_and_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _cli(capsys, "track", str(DEVICE), "--data", str(tmp_path / "nope"))
    assert status == 1 and "data folder" in err and "does not exist" in err
    status, _, err = _cli(capsys, "events", "--data", str(tmp_path))
    assert status == 1 and "events.sqlite does not exist" in err
    (tmp_path / "events.sqlite").write_bytes(b"garbage" * 200)
    status, _, err = _cli(capsys, "events", "--data", str(tmp_path))
    assert status == 1 and "not a usable SQLite database" in err and len(err.strip().splitlines()) == 1
    status, _, err = _cli(capsys, "track", str(DEVICE), "--data", str(tmp_path), "-o", str(tmp_path))
    assert status == 1 and len(err.strip().splitlines()) == 1


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=st.lists(st.tuples(st.integers(-900000000, 900000000), st.integers(-1800000000, 1800000000)),
                       min_size=1, max_size=20))
def test_any_track_exports_to_files_the_readers_accept(tmp_path_factory: pytest.TempPathFactory,
                                                       points: list[tuple[int, int]]) -> None:
    data = tmp_path_factory.mktemp("q")
    message = _msg("track", 1, points=[{"time": T0 + i, "lat_e7": la, "lon_e7": lo} for i, (la, lo) in enumerate(points)],
                   hdop_x10=12, sats=8)
    sink = SQLiteSink("sqlite", events_db_path(data))

    async def run() -> None:
        await sink.deliver([event_from_message(message, T0 + 100)])
        await sink.close()

    asyncio.run(run())
    text, count = export_track(data, str(DEVICE), "gpx")
    gpx_points = gpxpy.parse(text).tracks[0].segments[0].points
    assert count == len(points) == len(gpx_points)
    for got, (la, lo) in zip(gpx_points, points):
        assert abs(got.latitude - la / 1e7) < 1e-9 and abs(got.longitude - lo / 1e7) < 1e-9
    collection = geojson.loads(export_track(data, str(DEVICE), "geojson")[0])
    assert collection.is_valid
    assert len(list(csv.reader(io.StringIO(export_track(data, str(DEVICE), "csv")[0])))) == len(points) + 1


def test_sqlite_sink_batch_time_memo_gives_the_same_times(tmp_path: Path) -> None:
    """One batch whose events share received_at and card times (the batch's memo of
    parse_iso_utc answers most of them) stores exactly the rows parse_iso_utc gives event by event,
    also for times in other ISO forms; and a bad time still makes just its event malformed."""
    from carecard.host.sinks.sqlite_store import event_time, position_rows

    events = []
    for n in range(40):
        event = event_from_message(position_message(n + 1, device=OTHER + n % 3), T0 + 0.25)
        if n % 4 == 1:
            event["data"]["clock_synced"] = False
        if n % 10 == 3:
            event["received_at"] = event["received_at"][:19] + "+00:00"  # not the memo's fast form
        events.append(event)
    bad = dict(events[0], id="bad-1", received_at="2025-13-40T00:00:00Z")
    sink = SQLiteSink("sqlite", tmp_path / "events.sqlite")

    async def run() -> None:
        await sink.start()
        await sink.deliver(events[:20] + [bad] + events[20:])
        await sink.close()

    asyncio.run(run())
    assert sink.malformed == 1
    with sqlite3.connect(tmp_path / "events.sqlite") as conn:
        stored_t = dict(conn.execute("SELECT id, t FROM events").fetchall())
        stored_pos = {row[0]: row for row in conn.execute("SELECT * FROM positions").fetchall()}
    assert stored_t == {event["id"]: event_time(event) for event in events}
    expected = {row[0]: row for event in events for row in position_rows(event)}
    assert stored_pos == expected and len(expected) == len(events)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msg=__import__("protocol_strategies").message(direction="uplink"),
       received_at=st.floats(1_600_000_000, 2_000_000_000))
def test_a_frames_event_stored_from_its_message_equals_the_one_stored_from_its_json(msg, received_at):
    """The receiver logs a frame's event as its opened frame; the store writes its rows from the
    message and keeps the opened frame instead of the JSON. For every uplink type (unsynced
    clocks, no fix, unknown values included) that gives the same columns and positions as
    storing the event's JSON, and reading it back gives the same event."""
    from carecard.host.storage import LogEntry
    from carecard.host.events import event_json, event_record
    from carecard.host.sinks.sqlite_store import _Times
    from carecard.protocol import decode_frame, encode_frame, parse_opened

    key = bytes(range(16))
    opened: list[bytes] = []
    message = decode_frame(encode_frame(msg, key), key, opened)
    entry = LogEntry(1, 0.0, message=message, opened=opened[0], received_at=received_at)
    row, positions, is_alert = SQLiteSink._frame_rows(entry, _Times())
    event = event_from_message(message, received_at)
    json_row, json_positions, _ = SQLiteSink._rows(event, event_json(event), _Times())
    assert not is_alert
    assert row[:6] == json_row[:6] and positions == json_positions
    assert row[6] == "" and row[7] == opened[0] and row[8] == received_at
    assert event_record(parse_opened(row[7]), row[8])[1] == json_row[6] == entry.body
    assert entry.event == event


def _frame_row(frame: bytes, message: dict, opened: bytes, received_at: float) -> tuple:
    """A frame's row of the event log (eventlog.FRAME_ROW), as the ingest appends it."""
    return (message["device"], message["counter"], frame[-8:], message["type"], message["time"],
            received_at, "udp", frame, opened)


def test_events_from_the_receiver_read_back_as_made_from_their_frames(tmp_path: Path, capsys) -> None:
    """Frames through the real ingest, log and SQLite sink: `carecard events` prints each frame's
    event exactly as made from the decoded frame (the store keeps the opened frame, not JSON)."""
    from carecard.protocol import decode_frame, encode_frame

    key = bytes(range(16))
    frames = [encode_frame({**position_message(n), "type": "position"}, key) for n in range(1, 6)]
    writer = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))
    expected = []
    for n, frame in enumerate(frames):
        opened: list[bytes] = []
        message = decode_frame(frame, key, opened)
        received = T0 + 0.125 * n + 1000
        expected.append(event_from_message(message, received))
        SQLiteEventLog.append_frames(writer, [_frame_row(frame, message, opened[0], received)])

    _deliver_log(tmp_path)
    assert main(["events", "--data", str(tmp_path)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == expected
    with sqlite3.connect(events_db_path(tmp_path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM events WHERE body = '' AND opened IS NOT NULL").fetchone()[0] == 5


def test_a_damaged_stored_frame_is_one_line(tmp_path: Path, capsys) -> None:
    """A stored opened frame that does not parse (a damaged file) is one clear line from
    `carecard events`."""
    from carecard.protocol import decode_frame, encode_frame

    path = events_db_path(tmp_path)
    key = bytes(range(16))
    opened: list[bytes] = []
    new_frame = encode_frame(position_message(2), key)
    new_message = decode_frame(new_frame, key, opened)
    writer = SQLiteEventLog.connect_writer(ingest_db_path(tmp_path))
    SQLiteEventLog.append_frames(writer, [_frame_row(new_frame, new_message, opened[0], T0 + 121.25)])

    _deliver_log(tmp_path)
    assert main(["events", "--data", str(tmp_path)]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert printed == [event_from_message(new_message, T0 + 121.25)]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET opened = ? WHERE id = ?", (b"\x07damaged", f"{DEVICE}-2"))
    assert main(["events", "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be read back" in err and "Traceback" not in err


# The query store's first layout (keys on the event id), written only during development.
_LAYOUT_0 = (
    """CREATE TABLE events (id TEXT PRIMARY KEY, device TEXT NOT NULL, kind TEXT NOT NULL,
        t REAL NOT NULL, time TEXT, received_at TEXT NOT NULL, body TEXT NOT NULL, opened BLOB,
        received_unix REAL)""",
    "CREATE INDEX events_device_t ON events (device, t)",
    """CREATE TABLE positions (event_id TEXT NOT NULL, idx INTEGER NOT NULL, device TEXT NOT NULL,
        source TEXT NOT NULL, t REAL NOT NULL, time_estimated INTEGER NOT NULL, lat REAL NOT NULL,
        lon REAL NOT NULL, lat_e7 INTEGER NOT NULL, lon_e7 INTEGER NOT NULL, alt_m INTEGER,
        hdop REAL, sats INTEGER, fix TEXT, speed_ms REAL, course REAL, PRIMARY KEY (event_id, idx))""",
    "CREATE INDEX positions_device_t ON positions (device, t)",
)


def test_a_store_of_an_early_layout_is_refused_with_the_fix_and_left_as_it_is(tmp_path: Path) -> None:
    """A query store keyed on event ids (layout 0, written only during development) is not
    converted: the sink refuses it in one line naming the file and the fix, and leaves it as it
    is; an empty file (layout 0 too, no tables) is a new store."""
    path = events_db_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    event = _scenario()[0]
    with sqlite3.connect(path) as conn:
        for statement in _LAYOUT_0:
            conn.execute(statement)
        row, _extra, _is_alert = SQLiteSink._rows(event, None)
        conn.execute(f"INSERT INTO events VALUES ({','.join('?' * len(row))})", row)
    conn.close()

    def contents() -> tuple:
        with sqlite3.connect(path) as conn:
            found = (conn.execute("PRAGMA user_version").fetchone()[0],
                     conn.execute("SELECT name FROM sqlite_master ORDER BY name").fetchall(),
                     conn.execute("SELECT * FROM events").fetchall())
        conn.close()
        return found

    before = contents()
    sink = SQLiteSink("sqlite", path)
    with pytest.raises(SinkError) as refused:
        asyncio.run(sink.start())
    sink.release_io()
    message = str(refused.value)
    assert "\n" not in message and str(path) in message
    assert re.search(r"layout 0.*move it away.*new `name`", message), message
    assert contents() == before
    empty = tmp_path / "empty" / "events.sqlite"
    empty.parent.mkdir()
    sqlite3.connect(empty).close()
    fresh = SQLiteSink("sqlite", empty)

    async def deliver() -> None:
        await fresh.start()
        await fresh.deliver([event])
        await fresh.close()

    asyncio.run(deliver())
    with sqlite3.connect(empty) as conn:
        assert conn.execute("SELECT id FROM events").fetchall() == [(event["id"],)]
    conn.close()


def test_a_store_of_a_newer_layout_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = events_db_path(tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    sink = SQLiteSink("sqlite", path)

    async def start() -> None:
        await sink.start()

    with pytest.raises(SinkError, match=r"layout 99.*upgrade carecard"):
        asyncio.run(start())
    sink.release_io()
