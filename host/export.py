"""Queries on the SQLite sink's store (DATA/events.sqlite) and track export as GeoJSON, GPX, CSV.

Used by `carecard track` and `carecard events`; the store's layout is in
carecard.host.sinks.sqlite_store. Library code: raises QueryError, never prints.

Formats:
- GeoJSON (RFC 7946): a FeatureCollection with one LineString feature (the track, when it has at
  least two points; properties device, start, end, points) followed by one Point feature per
  position (properties time, time_estimated, source, alt_m, hdop, sats, fix, speed_ms, course,
  event_id). Coordinates are [lon, lat] in degrees.
- GPX 1.1: one <trk> named after the device, one <trkseg>, one <trkpt> per position with <ele>,
  <time>, <fix>, <sat>, <hdop> when known.
- CSV: a header line, then one row per position: time, time_estimated, device, lat, lon, alt_m,
  hdop, sats, fix, speed_ms, course, source, event_id.
Positions are ordered by time. `time` is ISO 8601 UTC; estimated times (the card's clock was not
synced) are flagged. Unknown values (spec.FIELDS) are null in GeoJSON, empty in CSV and left out of
GPX; a fix whose age is unknown has no time and is not in the store's positions, so not here.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from carecard.host.events import EventError, event_from_message
from carecard.host.timefmt import iso_utc, parse_iso_utc
from carecard.host.files import connect_readonly
from carecard.host.paths import events_db_path
from carecard.protocol import ProtocolError, parse_opened

FORMATS = ("geojson", "gpx", "csv")
GPX_NS = "http://www.topografix.com/GPX/1/1"
CSV_COLUMNS = ("time", "time_estimated", "device", "lat", "lon", "alt_m", "hdop", "sats", "fix",
               "speed_ms", "course", "source", "event_id")


class QueryError(Exception):
    """A query cannot run: missing store, unknown device, bad time. The message is one line."""


@dataclass(frozen=True)
class TrackPoint:
    t: float
    time_estimated: bool
    device: str
    lat: float
    lon: float
    alt_m: int | None
    hdop: float | None
    sats: int | None
    fix: str | None
    speed_ms: float | None
    course: float | None
    source: str
    event_id: str

    @property
    def time(self) -> str:
        return iso_utc(self.t)


def parse_time_arg(text: str, option: str) -> float:
    """An ISO 8601 date or date-time from the command line -> Unix seconds (naive = UTC)."""
    try:
        return parse_iso_utc(text)
    except (ValueError, OverflowError, OSError):
        raise QueryError(f"{option} {text!r} is not an ISO 8601 date or time "
                         "(e.g. 2025-11-29 or 2025-11-29T08:00:00Z)") from None


def normalize_device(device: str) -> str:
    text = device.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 20:
        raise QueryError(f"device {device!r} is not a device id: give the card's IMEI (digits)")
    return str(int(text))


def open_query_store_readonly(data_dir: Path | str) -> sqlite3.Connection:
    """Open DATA/events.sqlite read-only, with clear errors when it is not there."""
    data = Path(data_dir)
    if not data.is_dir():
        raise QueryError(f"data folder {data} does not exist: pass --data DIR (the receiver's "
                         "--data; default ./data)")
    path = events_db_path(data)
    if not path.is_file():
        raise QueryError(f"{path} does not exist: the receiver has not stored any event there yet "
                         "(is the SQLite sink configured?)")
    conn = connect_readonly(path, QueryError, where=str(path))
    try:
        conn.execute("SELECT 1 FROM events LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        conn.close()
        raise QueryError(f"cannot read {path}: {exc}") from None
    return conn


def device_known(conn: sqlite3.Connection, device: str) -> bool:
    return conn.execute("SELECT 1 FROM events WHERE device = ? LIMIT 1", (device,)).fetchone() is not None


def _conditions(*terms: tuple[str, Any], since: float | None = None,
                until: float | None = None) -> tuple[str, list[Any]]:
    """The WHERE clause's tail, `AND term` for each (SQL term with one ?, value) whose value is
    not None and for the time range (inclusive), and its parameters in order."""
    terms += (("t >= ?", since), ("t <= ?", until))
    given = [(term, value) for term, value in terms if value is not None]
    return "".join(f" AND {term}" for term, _value in given), [value for _term, value in given]


def track_points(conn: sqlite3.Connection, device: str, since: float | None = None,
                 until: float | None = None) -> list[TrackPoint]:
    """Positions of `device` between `since` and `until` (Unix s, inclusive), oldest first."""
    if not device_known(conn, device):
        raise QueryError(f"unknown device {device}: no events stored for it")
    extra, params = _conditions(since=since, until=until)
    rows = conn.execute(
        "SELECT t, time_estimated, device, lat, lon, alt_m, hdop, sats, fix, speed_ms, course, "
        f"source, event_id FROM positions WHERE device = ?{extra} ORDER BY t, event_id, idx",
        [device, *params],
    ).fetchall()
    return [TrackPoint(row[0], bool(row[1]), *row[2:]) for row in rows]


def iter_events(conn: sqlite3.Connection, device: str | None = None, kind: str | None = None,
                since: float | None = None, until: float | None = None,
                limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Stored events, oldest first; with `limit`, the most recent `limit` of them."""
    if device is not None and not device_known(conn, device):
        raise QueryError(f"unknown device {device}: no events stored for it")
    extra, params = _conditions(("device = ?", device), ("kind = ?", kind), since=since, until=until)
    where = "WHERE 1 = 1" + extra
    # a frame's event is stored as its opened frame (body ''): its event is made again from it
    have = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    columns = "body, opened, received_unix" if "opened" in have else "body, NULL, NULL"
    if limit is None:
        sql = f"SELECT {columns} FROM events {where} ORDER BY t, rowid"
    else:
        sql = (f"SELECT {columns} FROM (SELECT *, rowid AS r FROM events {where} "
               "ORDER BY t DESC, rowid DESC LIMIT ?) ORDER BY t, r")
        params.append(limit)
    for body, opened, received_unix in conn.execute(sql, params):
        if opened is not None:
            try:
                yield event_from_message(parse_opened(opened), received_unix)
            except (ProtocolError, EventError) as exc:
                raise QueryError(f"a stored event cannot be read back ({exc}): the store is damaged "
                                 "or from another version") from None
        else:
            yield json.loads(body)


def _props(point: TrackPoint) -> dict[str, Any]:
    return {"time": point.time, "time_estimated": point.time_estimated, "source": point.source,
            "alt_m": point.alt_m, "hdop": point.hdop, "sats": point.sats, "fix": point.fix,
            "speed_ms": point.speed_ms, "course": point.course, "event_id": point.event_id}


def to_geojson(device: str, points: list[TrackPoint]) -> str:
    features: list[dict[str, Any]] = []
    if len(points) >= 2:
        features.append({
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[p.lon, p.lat] for p in points]},
            "properties": {"device": device, "start": points[0].time, "end": points[-1].time,
                           "points": len(points)},
        })
    for point in points:
        features.append({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [point.lon, point.lat]},
            "properties": {"device": device, **_props(point)},
        })
    return json.dumps({"type": "FeatureCollection", "features": features}, ensure_ascii=False,
                      indent=1) + "\n"


def to_gpx(device: str, points: list[TrackPoint]) -> str:
    ET.register_namespace("", GPX_NS)
    q = lambda tag: f"{{{GPX_NS}}}{tag}"  # noqa: E731
    root = ET.Element(q("gpx"), {"version": "1.1", "creator": "carecard"})
    metadata = ET.SubElement(root, q("metadata"))
    ET.SubElement(metadata, q("name")).text = f"CareCard {device}"
    trk = ET.SubElement(root, q("trk"))
    ET.SubElement(trk, q("name")).text = device
    seg = ET.SubElement(trk, q("trkseg"))
    for point in points:  # child order follows the GPX 1.1 schema (wptType)
        pt = ET.SubElement(seg, q("trkpt"), {"lat": f"{point.lat:.7f}", "lon": f"{point.lon:.7f}"})
        if point.alt_m is not None:
            ET.SubElement(pt, q("ele")).text = str(point.alt_m)
        ET.SubElement(pt, q("time")).text = point.time
        if point.fix in ("2d", "3d"):
            ET.SubElement(pt, q("fix")).text = point.fix
        if point.sats is not None:
            ET.SubElement(pt, q("sat")).text = str(point.sats)
        if point.hdop is not None:
            ET.SubElement(pt, q("hdop")).text = f"{point.hdop:g}"
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def to_csv(device: str, points: list[TrackPoint]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for p in points:
        writer.writerow([p.time, int(p.time_estimated), p.device, f"{p.lat:.7f}", f"{p.lon:.7f}",
                         "" if p.alt_m is None else p.alt_m, "" if p.hdop is None else p.hdop,
                         "" if p.sats is None else p.sats, p.fix or "",
                         "" if p.speed_ms is None else p.speed_ms, "" if p.course is None else p.course,
                         p.source, p.event_id])
    return out.getvalue()


EXPORTERS = {"geojson": to_geojson, "gpx": to_gpx, "csv": to_csv}


def export_track(data_dir: Path | str, device: str, fmt: str, since: float | None = None,
                 until: float | None = None) -> tuple[str, int]:
    """(exported text, number of points) for `device` in `fmt` (one of FORMATS)."""
    if fmt not in EXPORTERS:
        raise QueryError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if since is not None and until is not None and since > until:
        raise QueryError("--since is after --until")
    device = normalize_device(device)
    conn = open_query_store_readonly(data_dir)
    try:
        points = track_points(conn, device, since, until)
    finally:
        conn.close()
    return EXPORTERS[fmt](device, points), len(points)
