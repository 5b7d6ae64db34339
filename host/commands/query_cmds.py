"""`carecard track` and `carecard events`: queries on the SQLite sink's store (DATA/events.sqlite)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from carecard.host.cli import CommandError
from carecard.host.events import EVENT_KINDS
from carecard.host.export import (
    FORMATS,
    QueryError,
    export_track,
    iter_events,
    normalize_device,
    open_store,
    parse_time_arg,
)
from carecard.host.paths import DEFAULT_DATA_DIR


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="ISO", help="from this time (ISO 8601; no zone = UTC)")
    parser.add_argument("--until", metavar="ISO", help="up to this time, inclusive")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, metavar="DIR",
                        help=f"the receiver's data folder (default ./{DEFAULT_DATA_DIR})")


def register(subparsers: argparse._SubParsersAction) -> None:
    track = subparsers.add_parser(
        "track", help="export a card's track (GeoJSON, GPX or CSV)",
        description="Export the positions of one card (position reports, track points, SOS with "
                    "a fix) from DATA/events.sqlite, oldest first.")
    track.add_argument("device", metavar="DEVICE", help="the card's device id (IMEI)")
    track.add_argument("--format", choices=FORMATS, default="geojson", help="output format (default geojson)")
    track.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here instead of stdout")
    _common(track)
    track.set_defaults(func=run_track)

    events = subparsers.add_parser(
        "events", help="list stored events as JSON lines",
        description="Print stored events (docs/events.md) as JSON lines, oldest first.")
    events.add_argument("device", nargs="?", metavar="DEVICE", help="only this card (IMEI)")
    events.add_argument("--kind", choices=EVENT_KINDS, help="only this kind of event")
    events.add_argument("--limit", type=int, metavar="N", help="only the N most recent events")
    _common(events)
    events.set_defaults(func=run_events)


def _times(args: argparse.Namespace) -> tuple[float | None, float | None]:
    since = parse_time_arg(args.since, "--since") if args.since else None
    until = parse_time_arg(args.until, "--until") if args.until else None
    if since is not None and until is not None and since > until:
        raise QueryError("--since is after --until")
    return since, until


def run_track(args: argparse.Namespace) -> int:
    try:
        since, until = _times(args)
        text, count = export_track(args.data, args.device, args.format, since, until)
    except QueryError as exc:
        raise CommandError(str(exc)) from None
    if args.output:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        print(f"{count} positions written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def run_events(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise CommandError("--limit must be at least 1")
    try:
        since, until = _times(args)
        device = normalize_device(args.device) if args.device else None
        conn = open_store(args.data)
        try:
            out = sys.stdout
            for event in iter_events(conn, device, args.kind, since, until, args.limit):
                out.write(json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n")
        finally:
            conn.close()
    except QueryError as exc:
        raise CommandError(str(exc)) from None
    return 0
