"""`carecard replay EVENTS.jsonl [--settings FILE] [--until T] [--state-out FILE]`
and `carecard replay --evaluate CORPUS_DIR`.

Replay runs the alert engine over a recorded event log (the JSON-lines sink's exact format) in
virtual time and prints every alert step as an `alert` event, one JSON line each (docs/events.md,
Alert vocabulary). `--evaluate` runs a scenario corpus (host/engine/evaluate.py) and prints the
report: incidents detected, missed and late, false alerts per device-month, time to first alert.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from carecard.host.commands.errors import CommandError, CommandFailed


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "replay", help="run the alert engine over a recorded event log, or evaluate a corpus",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", nargs="?", type=Path, help="event log (JSON lines, as the jsonl sink writes)")
    parser.add_argument("--settings", type=Path, help="per-device settings (TOML or JSON; docs/events.md)")
    parser.add_argument("--until", help="run the clock to this ISO 8601 time (later events are not fed)")
    parser.add_argument("--state-out", type=Path, help="write the engine's state (JSON) here at the end")
    parser.add_argument("--evaluate", type=Path, metavar="CORPUS_DIR",
                        help="evaluate a scenario corpus instead (*.jsonl with *.expected.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from carecard.host.engine import Settings, SettingsError
    from carecard.host.engine.replay import ReplayError, replay
    from carecard.host.events import event_json
    from carecard.host.timefmt import parse_iso_utc

    if args.evaluate is not None:
        from carecard.host.engine.evaluate import CorpusError, evaluate_corpus, format_report

        if args.log is not None:
            raise CommandError("give either a log or --evaluate CORPUS_DIR, not both")
        try:
            report = evaluate_corpus(args.evaluate)
        except (CorpusError, SettingsError, ReplayError) as exc:
            raise CommandFailed(str(exc)) from None
        print(format_report(report))
        return 0 if report.meets_targets() else 1
    if args.log is None:
        raise CommandError("give an event log (EVENTS.jsonl) or --evaluate CORPUS_DIR")
    try:
        settings = Settings.load(args.settings) if args.settings else Settings()
    except SettingsError as exc:
        raise CommandFailed(str(exc)) from None
    until = None
    if args.until:
        try:
            until = parse_iso_utc(args.until)
        except (ValueError, IndexError):
            raise CommandError(f"--until {args.until!r}: not an ISO 8601 time "
                               "(e.g. 2025-11-29T08:00:00Z)") from None
    try:
        result = replay(args.log, settings, until=until)
    except ReplayError as exc:
        raise CommandFailed(str(exc)) from None
    if result.events == 0:
        first = result.bad_lines[0] if result.bad_lines else None
        why = f"; line {first[0]}: {first[1]}" if first else ""
        raise CommandFailed(f"no event found in {args.log} ({len(result.bad_lines)} lines skipped{why})")
    write = sys.stdout.write
    from carecard.host.engine import Notify

    alerts = 0
    for action in result.actions:
        if isinstance(action, Notify):
            write(event_json(action.event()) + "\n")
            alerts += 1
    for number, why in result.bad_lines[:10]:
        where = f"line {number}" if number > 0 else "event"
        print(f"carecard replay: {args.log}: {where} skipped: {why}", file=sys.stderr)
    if len(result.bad_lines) > 10:
        print(f"carecard replay: ... and {len(result.bad_lines) - 10} more skipped lines", file=sys.stderr)
    print(f"carecard replay: {result.events} events, {alerts} alert steps, "
          f"{len(result.bad_lines)} lines skipped", file=sys.stderr)
    if args.state_out is not None:
        assert result.engine is not None
        try:
            args.state_out.write_text(json.dumps(result.engine.to_state(), ensure_ascii=False))
        except OSError as exc:
            raise CommandFailed(f"cannot write the engine state to {args.state_out}: "
                                f"{exc.strerror or exc}") from None
    return 0
