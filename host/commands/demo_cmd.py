"""`carecard demo` (what `make demo` runs): a virtual village end to end, with pictures.

Six elders from an example sheet (tools/vcard/demo/village.csv) get virtual cards through the
factory's provisioning path (flashed and provisioned over the real mpremote, registered with the
receiver); a real `carecard receive` (its alert engine, SQLite) listens on 127.0.0.1; each card
runs the real firmware on the MicroPython unix port through a different day in virtual time (an
ordinary day, a fall at home, an SOS whose first contact does not answer, a coverage hole, a
battery running down, a card left on the table), all in lockstep on one virtual clock that the
receiver and its alert engine follow. A live timeline (the cards' frames and calls, the engine's
alerts, escalations and check-in prompts as it commits them) and progress bars while they run;
then the alerts, a summary table,
pictures (track and home with the alert times, a day strip) and GeoJSON/GPX exports, and where
everything was written. `--quick` plays three short days (the test suite runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from carecard.host.commands.errors import CommandFailed

DEMO_MARKER = ".carecard-demo"
SHOWN_UPLINKS = ("sos", "call", "power", "checkin", "command_result", "hello")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="a virtual village: provisioned virtual cards, the real firmware, a real "
                     "receiver, in virtual time; a live timeline, a summary and pictures")
    parser.add_argument("--data", metavar="DIR", default="data/demo",
                        help="the demo's data folder, emptied first (default ./data/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="three short days instead of six (about a minute less)")
    parser.set_defaults(func=run)


def _prepare(data_dir: Path) -> None:
    """An empty demo folder at `data_dir`: created, or emptied when an earlier demo made it."""
    from carecard.host.paths import DataDir, DataDirError, check_data_dir

    data = DataDir(data_dir, "--data")
    try:
        check_data_dir(data, must_exist=False)
        if data_dir.exists() and any(data_dir.iterdir()):
            if not (data_dir / DEMO_MARKER).exists():
                raise CommandFailed(f"{data_dir} is not empty and is not a demo folder: pass another --data")
            check_data_dir(data, write=True)
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (data_dir / DEMO_MARKER).write_text("created by `carecard demo`; emptied by the next demo run\n")
    except DataDirError as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        raise CommandFailed(f"cannot prepare the demo folder {data_dir}: {exc.strerror}") from None


def carecard_command() -> str:
    """The `carecard` command as a fresh shell finds it: the bare name when PATH reaches this
    installation through a link outside its environment (as `pipx install .` makes); else the
    script beside this interpreter (a venv's bin/, on PATH only while it is activated)."""
    beside = Path(sys.executable).parent / "carecard"
    found = shutil.which("carecard")
    if (found and beside.exists() and Path(found).resolve() == beside.resolve()
            and Path(found).parent.resolve() != beside.parent.resolve()):
        return "carecard"
    return str(beside) if beside.exists() else "carecard"


def _event_text(e: dict[str, Any]) -> str | None:
    """A card-side event worth a line of the live timeline; None for the routine ones."""
    kind = e["kind"]
    if kind == "step":
        rest = " ".join(f"{k}={v}" for k, v in e.items() if k not in ("t_ms", "time", "kind", "do"))
        return f"[cyan]{e['do']}[/] {rest}".rstrip()
    if kind == "uplink" and e["type"] in SHOWN_UPLINKS and not e.get("retransmission"):
        f = e.get("fields", {})
        if e["type"] == "call":
            return f"[yellow]call[/] key {f.get('key')} {f.get('number')}: {f.get('outcome')}"
        if e["type"] == "sos":
            return "[bold red]SOS frame[/] sent"
        if e["type"] == "power":
            return f"[magenta]battery {f.get('event')}[/] {f.get('battery_mv')} mV"
        if e["type"] == "hello":
            return f"hello (reset cause {f.get('reset_cause')})"
        return f"{e['type']} {f}"
    if kind == "ack" and e.get("commands"):
        return "downlink: " + ", ".join(c.get("cmd", "?") for c in e["commands"])
    if kind in ("watchdog", "crash", "hang", "reset", "power_loss"):
        return f"[red]{kind}[/] {e.get('detail', '')}"
    return None


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    data_dir = Path(args.data)
    _prepare(data_dir)
    with _card_interpreter():
        try:
            return _run(args, data_dir, started)
        except KeyboardInterrupt:
            print(f"\ninterrupted: the cards and the receiver stopped; what they stored is in {data_dir}",
                  file=sys.stderr)
            return 130


@contextlib.contextmanager
def _card_interpreter() -> Iterator[None]:
    """The cards run on the 32-bit MicroPython port built like the card's (`make port32`), unless
    an interpreter was chosen (CARECARD_MICROPYTHON)."""
    from carecard.tools import micropython, port32

    if os.environ.get(micropython.SELECT_VARIABLE):
        yield
        return
    try:
        interpreter = micropython.card_port()
    except port32.Port32Error as exc:
        raise CommandFailed(f"the card-like MicroPython port is not built ({exc}); run `make port32` "
                            "(or `make demo`, which builds it)") from None
    with micropython.using(interpreter):
        yield


def _run(args: argparse.Namespace, data_dir: Path, started: float) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from carecard.tools.vcard import demo, sim

    console = Console(highlight=False)
    console.rule("[bold]CareCard demo: a virtual village in Nan'an")
    village = demo.Village(data_dir, quick=args.quick)
    try:
        port = village.start_receiver()
        console.print(f"receiver: [bold]carecard receive[/] on UDP 127.0.0.1:{port}, alert engine "
                      f"on, SQLite in {data_dir} (log {data_dir / 'receiver.log'}), on the "
                      "village's virtual clock")
        console.print(f"provisioning virtual cards from {demo.SHEET} (flash + config over mpremote, "
                      "registered with the receiver) ...")
        village.provision(on_card=lambda c: console.print(
            f"  card {c.device}  {c.elder.name}  {c.day.scenario}: {c.day.story}"))
        lock = threading.Lock()
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[hours]}"),
                      TextColumn("{task.fields[frames]} frames"), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            tasks = {}
            frames: dict[int, int] = {}
            said: dict[int, tuple[str, int]] = {}
            village_hours = (village.end_unix() - village.start_unix) / 3600
            clock_task = progress.add_task("[bold]village clock", total=village_hours,
                                           hours=f"0/{village_hours:.0f} h", frames="-")
            for card in village.cards:
                total = (card.until_s or card.scenario.duration_s) / 3600
                tasks[card.device] = progress.add_task(f"{card.elder.name} {card.day.scenario}",
                                                       total=total, hours=f"0/{total:.0f} h", frames=0)
                frames[card.device] = 0

            def on_event(card: demo.DemoCard, e: dict[str, Any]) -> None:
                if e["kind"] == "uplink" and not e.get("retransmission"):
                    frames[card.device] += 1
                    progress.update(tasks[card.device], frames=frames[card.device])
                text = _event_text(e)
                if text is None:
                    return
                # a card that restarts again and again says so once per half hour
                last = said.get(card.device)
                if last is not None and last[0] == text and e["t_ms"] - last[1] < 1_800_000:
                    return
                said[card.device] = (text, e["t_ms"])
                when = demo.local_time(card, e["t_ms"])
                with lock:
                    progress.console.print(f"{when:%m-%d %H:%M} [bold]{card.elder.name}[/] {text}")

            def on_progress(card: demo.DemoCard, now: int, end: int) -> None:
                progress.update(tasks[card.device], completed=now / 3_600_000,
                                hours=f"{now / 3_600_000:.0f}/{end / 3_600_000:.0f} h")

            def on_alert(card: demo.DemoCard, a: dict[str, Any]) -> None:
                with lock:
                    progress.console.print(_alert_line(card, a, live=True))

            def on_time(t: float) -> None:
                hours = (t - village.start_unix) / 3600
                progress.update(clock_task, completed=hours, hours=f"{hours:.0f}/{village_hours:.0f} h")

            village.run(on_event=on_event, on_progress=on_progress, on_alert=on_alert, on_time=on_time)
        out = data_dir / "pictures"
        village.finish(out)
    except (demo.DemoError, sim.SimError) as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        village.stop()
    failed = [c for c in village.cards if c.error]
    for card in failed:
        console.print(f"[red]{card.elder.name}: the virtual card failed: {card.error}")
    _alerts(console, village)
    _summary(console, village)
    _files(console, village, data_dir, out, time.monotonic() - started)
    return 1 if failed else 0


def _alert_line(card: Any, a: dict[str, Any], live: bool = False) -> str:
    """An alert event (raised, escalated, check-in, acknowledged, resolved) as a line."""
    from carecard.tools.vcard import demo

    d = a["data"]["details"]
    when = demo.local_time(card, demo.alert_ms(card, a))
    who = ", ".join(d.get("notify") or []) or "-"
    reason = d.get("closed_reason") or d.get("reason")
    reason = f", {reason}" if reason else ""
    return (f"{when:%m-%d %H:%M} [bold]{card.elder.name}[/] {'[bold red]ALERT[/] ' if live else ''}"
            f"[red]{a['data']['alert']}[/] {d.get('step')} -> {who} (state {d.get('state')}{reason})")


def _alerts(console: Any, village: Any) -> None:
    console.rule("alerts (raised, escalated and resolved live by the receiver's engine)")
    for card in village.cards:
        for a in card.alerts:
            console.print(_alert_line(card, a))


def _summary(console: Any, village: Any) -> None:
    from carecard.tools.vcard import demo

    console.print(summary_table(demo.summary_rows(village.cards)))
    console.print("first alert: local time (day of month when not the incident's), minutes after the "
                  "incident began; battery: days per "
                  "charge of the 1000 mAh reference cell at the energy the firmware drew that day; "
                  "checks: the scenario's expectations met")


def summary_table(rows: list[dict[str, Any]]) -> Any:
    """The summary (demo.summary_rows) as a rich Table that keeps its values whole on an
    80-column terminal: the day in a few words, the first alert with its delay after the
    incident in one column, no vertical rules."""
    from rich import box
    from rich.table import Table

    table = Table(title="the village's day", box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for column, justify in (("elder", "left"), ("day", "left"), ("frames", "right"), ("calls", "right"),
                            ("alerts", "left"), ("first alert", "left"), ("battery", "right"),
                            ("checks", "right")):
        wraps = column == "alerts"  # one alert kind a line when they do not fit
        table.add_column(column, justify=justify, no_wrap=not wraps,  # type: ignore[arg-type]
                         min_width=len("card_not_worn,") if wraps else None)
    for row in rows:
        card = row["card"]
        day = card.day.title or card.day.scenario
        if "error" in row:
            table.add_row(card.elder.name, day, "-", "-", "-", "-", "-", "did not run")
            continue
        checks = row["checks"]
        passed = sum(1 for c in checks if c.passed)
        first = "-"
        if row["first_alert"] is not None:
            same_day = row["incident"] is not None and row["incident"].date() == row["first_alert"].date()
            first = f"{row['first_alert']:%H:%M}" if same_day else f"{row['first_alert']:%d %H:%M}"
            if row["delay_min"] is not None:
                first += f" +{max(0, round(row['delay_min']))} min"
        table.add_row(
            card.elder.name, day, str(row["frames"]), str(row["calls"]),
            ", ".join(row["alerts"]) or "none", first,
            f"{row['days_per_charge']:.1f} d" if row["days_per_charge"] else "-",
            f"{passed}/{len(checks)}")
    return table


def _files(console: Any, village: Any, data_dir: Path, out: Path, seconds: float) -> None:
    console.rule("written")
    for card in village.cards:
        for label in ("track_png", "day_png", "geojson", "gpx", "events"):
            path = card.files.get(label)
            if path is not None:
                console.print(f"  {path}")
    carecard = shlex.quote(carecard_command())
    folder = shlex.quote(str(data_dir.resolve()))
    console.print(f"\ndemo finished in {seconds:.0f} s. The receiver's data is in {data_dir}; look around:")
    console.print(f"  {carecard} devices --data {folder}")
    console.print(f"  {carecard} alerts --data {folder}")
    if village.cards:
        console.print(f"  {carecard} track {village.cards[0].device} --data {folder} --format gpx")
    console.print(f"  {carecard} serve --data {folder}      # the dashboard")
