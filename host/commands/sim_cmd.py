"""`carecard sim SCENARIO`: a scenario end to end on the virtual card against a real receiver.

The card image's main.py runs on the MicroPython unix port with the simulated board, A7670 and
GNSS receiver in virtual time (carecard.tools.vcard.sim); its datagrams go to a real `carecard
receive` on 127.0.0.1 (started for the run, or yours with --receiver and --data). Prints the
timeline, the energy of the run (the states the firmware drove, beside the duty model's figure)
and the scenario's expectations; exits 1 when one fails.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from carecard.host.commands.errors import EXIT_FAILED, CommandError, CommandFailed

QUIET_KINDS = ("card_print",)
EXIT_TERMINATED = 128 + signal.SIGTERM   # the shell's status for a process ended by SIGTERM


class Terminated(SystemExit):
    """SIGTERM during the run: unwinds through the run's clean-up (the receiver it started is
    stopped, the card's process ended, temporary folders removed), then exits 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)   # one clean-up; a second signal waits for it
    raise Terminated(EXIT_TERMINATED)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sim",
        help="run a scenario on the virtual card (the real firmware) against a real receiver",
        description="Play a scenario (a .toml file or a shipped name such as normal-day; "
                    "docs/virtual-card.md) with the card's firmware on the MicroPython unix port, "
                    "the simulated board, modem and GNSS in virtual time, against a real "
                    "`carecard receive` on 127.0.0.1. Prints the timeline, the energy of the run "
                    "and the scenario's expectations; exit status 1 when one fails.",
    )
    p.add_argument("scenario", help="a scenario .toml file or the name of a shipped one")
    p.add_argument("--receiver", metavar="HOST:PORT",
                   help="a running receiver's UDP address (default: start one for the run); "
                        "needs --data, its data folder")
    p.add_argument("--data", metavar="DIR",
                   help="the receiver's data folder: kept after the run (default: a temporary one, "
                        "removed); with --receiver, the folder that receiver uses")
    p.add_argument("--card", metavar="DIR",
                   help="a provisioned card's folder (config.json from `carecard provision`); "
                        "default: a fresh card registered with the receiver")
    p.add_argument("--events", metavar="OUT.jsonl",
                   help="write what the receiver stored, in the documented event schema "
                        "(docs/events.md), with received_at on the simulated clock, one per line "
                        "('-': standard output); `carecard replay` evaluates the alert engine on it")
    p.add_argument("--timeline-jsonl", action="store_true",
                   help="print the card-side timeline as JSON lines instead of text")
    p.add_argument("--until", metavar="DURATION",
                   help="stop early, e.g. '36h' (expectations are checked on what happened)")
    p.add_argument("--quiet", action="store_true", help="no timeline: only the energy and the checks")
    p.set_defaults(func=run)


def _endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CommandError(f"--receiver {text!r} is not HOST:PORT (e.g. 127.0.0.1:5683)")
    return host, int(port)


def _line(e: dict[str, Any]) -> str | None:
    """One event of the card's timeline as text; None for what the text timeline leaves out."""
    kind = e["kind"]
    when = e["time"][:19].replace("T", " ")
    if kind == "uplink":
        again = " (again)" if e.get("retransmission") else ""
        f = e.get("fields", {})
        extra = ""
        if e["type"] in ("position", "sos") and f.get("fix") not in (None, "none"):
            extra = f" {f['lat_e7'] / 1e7:.5f},{f['lon_e7'] / 1e7:.5f} {f.get('source', '')}"
        elif e["type"] == "status":
            extra = f" battery {f.get('battery_pct')} % motion {f.get('motion_count')}"
        elif e["type"] == "power":
            extra = f" {f.get('event')} {f.get('battery_mv')} mV"
        elif e["type"] == "call":
            extra = f" key {f.get('key')} {f.get('outcome')}"
        elif e["type"] == "track":
            extra = f" {len(f.get('points', []))} points"
        return f"{when}  -> {e['type']} #{e['counter']}{again}{extra}"
    if kind == "ack":
        cmds = ", ".join(c.get("cmd", "?") for c in e.get("commands", []))
        return f"{when}  <- ack #{e['acked']} ({e.get('of')})" + (f" + {cmds}" if cmds else "")
    if kind == "step":
        rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("t_ms", "time", "kind", "do"))
        return f"{when}  ** {e['do']} {rest}".rstrip()
    if kind in QUIET_KINDS:
        return None
    rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("t_ms", "time", "kind"))
    return f"{when}  !! {kind} {rest}".rstrip()


def _print_event(e: dict[str, Any], jsonl: bool, out: TextIO) -> None:
    if jsonl:
        out.write(json.dumps(e, ensure_ascii=False) + "\n")
        return
    text = _line(e)
    if text is not None:
        out.write(text + "\n")


def run(args: argparse.Namespace) -> int:
    from carecard.tools.vcard import scenario, sim

    receiver = _endpoint(args.receiver) if args.receiver else None
    if receiver is not None and not args.data:
        raise CommandError("--receiver needs --data DIR: that receiver's data folder (the card is "
                           "registered there and what it stored is read back)")
    until = None
    try:
        sc = scenario.load(scenario.find(args.scenario))
        if args.until:
            until = scenario.parse_duration(args.until, "--until")
    except scenario.ScenarioError as exc:
        raise CommandFailed(str(exc)) from None
    show = not args.quiet
    options = sim.SimOptions(receiver=receiver, data_dir=Path(args.data) if args.data else None,
                             card_dir=Path(args.card) if args.card else None, until_s=until)
    if show and not args.timeline_jsonl:
        print(f"scenario {sc.name}: {sc.description}")
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = sim.run_scenario(sc, options)
    except (sim.SimError, scenario.ScenarioError) as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    if show:
        for e in result.timeline:
            _print_event(e, args.timeline_jsonl, sys.stdout)
    if args.events:
        _write_events(args.events, sim.virtual_events(result))
    if args.timeline_jsonl:
        return 0 if result.passed else EXIT_FAILED
    _summary(result)
    return 0 if result.passed else EXIT_FAILED


def _write_events(target: str, events: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
    if target == "-":
        sys.stdout.write(text)
        return
    try:
        Path(target).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CommandFailed(f"cannot write --events {target}: {exc.strerror}") from None


def _summary(r: Any) -> None:
    days = r.end_ms / 86_400_000
    kinds: dict[str, int] = {}
    for e in r.events:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    print(f"\n{r.scenario}: {days:.2f} simulated days in {r.real_s:.1f} s; card {r.device}; "
          f"{r.requests} board requests; {r.datagrams_out} datagrams out, {r.datagrams_in} in; resets: "
          + ", ".join(f"{cause}@{ms / 3_600_000:.2f}h" for ms, cause in r.resets))
    print(f"receiver stored {len(r.events)} frames ("
          + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + f"), acked {len(r.acked)} counters")
    fw, duty = r.energy, r.duty_energy
    print(f"energy (the states the firmware drove): {fw['mah_per_day']:.1f} mAh/day, average "
          f"{fw['average_ma']:.2f} mA, {fw['days_per_charge']:.1f} days per "
          f"{fw['battery_mah']:.0f} mAh charge; duty model {duty['days_per_charge']:.1f} days")
    for comp, c in sorted(fw["breakdown"].items(), key=lambda kv: -kv[1]["mah_per_day"]):
        other = duty["breakdown"].get(comp, {}).get("mah_per_day", 0.0)
        print(f"  {comp:<7} {c['mah_per_day']:7.1f} mAh/day (duty model {other:6.1f})")
    print("expectations:")
    for check in r.checks:
        label = ", ".join(f"{k}={v}" for k, v in check.expect.items())
        print(f"  {'ok  ' if check.passed else 'FAIL'} {label}: {check.detail}")
    if not r.checks:
        print("  (none in the scenario)")
