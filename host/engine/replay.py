"""Replay a recorded event log (the JSON-lines sink's format) through the engine in virtual time.

The engine's clock is each event's `received_at`: before an event is fed, every wake-up due by
then fires (at its own due time), exactly as it would have in a live receiver. A line that is
not an event is skipped and reported (line number and why), never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from carecard.host.engine.core import Action, Engine, EngineError
from carecard.host.engine.settings import Settings
from carecard.host.timefmt import parse_iso_utc


class ReplayError(ValueError):
    """The log cannot be read at all (missing, a folder, no permission)."""


@dataclass
class ReplayResult:
    actions: list[Action] = field(default_factory=list)
    events: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)
    end: float | None = None
    engine: Engine | None = None


def read_events(path: Path | str, bad: list[tuple[int, str]]) -> Iterator[tuple[float, dict[str, Any]]]:
    """(received_at, event) per line of a JSON-lines event log; bad lines go to `bad`."""
    path = Path(path)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read the event log: {exc.strerror or exc}") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                bad.append((number, f"not JSON ({exc})"))
                continue
            if not isinstance(event, dict):
                bad.append((number, "not a JSON object"))
                continue
            try:
                rx = parse_iso_utc(event["received_at"])
            except (KeyError, TypeError, ValueError, IndexError):
                bad.append((number, "no valid received_at (ISO 8601 UTC)"))
                continue
            yield rx, event


def replay(path: Path | str, settings: Settings | None = None, *, until: float | None = None,
           engine: Engine | None = None) -> ReplayResult:
    """Run the log through an engine (a new one with `settings` unless given) to its end, or to
    `until` (events received later are not fed; the clock then runs on to `until`)."""
    engine = engine or Engine(settings)
    result = ReplayResult(engine=engine)
    out = result.actions
    last = None
    for rx, event in read_events(path, result.bad_lines):
        if until is not None and rx > until:
            break
        out += engine.advance(rx)
        try:
            out += engine.feed(event)
        except EngineError as exc:
            result.bad_lines.append((-1, str(exc)))
            continue
        result.events += 1
        last = rx if last is None or rx > last else last
    end = until if until is not None else last
    if end is not None:
        out += engine.advance(end)
    result.end = end
    return result
