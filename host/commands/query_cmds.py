"""`carecard track` and `carecard events`: queries on the SQLite sink's store (DATA/events.sqlite)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from carecard.host.commands.errors import EXIT_FAILED, CommandError
from carecard.host.commands.datadir import add_data_options, data_dir_of, open_ingest_readonly, resolve_device
from carecard.host.events import EVENT_KINDS
from carecard.host.export import (
    FORMATS,
    QueryError,
    export_track,
    iter_events,
    normalize_device,
    open_query_store_readonly,
    parse_time_arg,
)
from carecard.host.paths import DataDir


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="ISO", help="from this time (ISO 8601; no zone = UTC)")
    parser.add_argument("--until", metavar="ISO", help="up to this time, inclusive")
    add_data_options(parser)


def register(subparsers: argparse._SubParsersAction) -> None:
    track = subparsers.add_parser(
        "track", help="export a card's track (GeoJSON, GPX or CSV)",
        description="Export the positions of one card (position reports, track points, SOS with "
                    "a fix) from DATA/events.sqlite, oldest first.")
    track.add_argument("device", metavar="DEVICE", help="the card's IMEI or the elder's registered name")
    track.add_argument("--format", choices=FORMATS, default="geojson", help="output format (default geojson)")
    track.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    _common(track)
    track.set_defaults(func=run_track)

    events = subparsers.add_parser(
        "events", help="list stored events as JSON lines",
        description="Print stored events (docs/events.md) as JSON lines, oldest first.")
    events.add_argument("device", nargs="?", metavar="DEVICE",
                        help="only this card (IMEI or the elder's registered name)")
    events.add_argument("--kind", choices=EVENT_KINDS, help="only this kind of event")
    events.add_argument("--limit", type=int, metavar="N", help="only the N most recent events")
    _common(events)
    events.set_defaults(func=run_events)


def _times(args: argparse.Namespace) -> tuple[float | None, float | None]:
    try:
        since = parse_time_arg(args.since, "--since") if args.since else None
        until = parse_time_arg(args.until, "--until") if args.until else None
    except QueryError as exc:
        raise CommandError(str(exc)) from None
    if since is not None and until is not None and since > until:
        raise CommandError("--since is after --until")
    return since, until


def device_id(data: DataDir, text: str) -> str:
    """The device id (IMEI digits) that `text` names: an IMEI, or the exact registered name of one
    card (looked up in the registry, DATA/carecard.sqlite)."""
    value = text.strip()
    if value.isdigit() and value.isascii():
        try:
            return normalize_device(value)
        except QueryError as exc:
            raise CommandError(str(exc)) from None
    conn = open_ingest_readonly(data)
    try:
        return str(resolve_device(conn, value))
    finally:
        conn.close()


def run_track(args: argparse.Namespace) -> int:
    since, until = _times(args)
    data = data_dir_of(args)
    device = device_id(data, args.device)
    try:
        text, count = export_track(data.path, device, args.format, since, until)
    except QueryError as exc:
        raise CommandError(str(exc), status=EXIT_FAILED) from None
    if args.output:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}",
                               status=EXIT_FAILED) from None
        print(f"{count} positions written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def run_events(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be at least 1")
    since, until = _times(args)
    data = data_dir_of(args)
    device = device_id(data, args.device) if args.device else None
    try:
        conn = open_query_store_readonly(data.path)
        try:
            out = sys.stdout
            for event in iter_events(conn, device, args.kind, since, until, args.limit):
                out.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
        finally:
            conn.close()
    except QueryError as exc:
        raise CommandError(str(exc), status=EXIT_FAILED) from None
    return 0
