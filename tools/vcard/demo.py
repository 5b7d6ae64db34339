"""The demo village (`carecard demo`, `make demo`): a handful of virtual cards provisioned from an
example sheet through the factory path, each living a different day against one real receiver.

    village = Village(data_dir)
    village.start_receiver()                 # carecard receive (its engine, SQLite), 127.0.0.1,
                                             # on the village's virtual clock
    village.provision(sheet, days)           # virtual mpremote boards: flash, provision, register
    village.run(on_event=..., on_alert=...)  # every card's day at once, in lockstep
    village.finish(out_dir)                  # exports, pictures; village.cards[i] holds everything

Provisioning is the factory's own (host/factory): each card is a virtual MicroPython board
(tools/vdevice.py) with a simulated A7670 on its UART 1 and a ROMFS partition, driven by the real
mpremote: the image flashed (`flash_device`: its libraries deployed to ROMFS, verified), then what `carecard provision --port` runs (`provision_batch`): the IMEI
and ICCID read from the modem by the card's own driver, the SIM phonebook, the elder's config
written and read back by the firmware's own config module, the batch registered with the
receiver (registry, keys, records, the elders' engine settings).
Then the card's folder (its flash, with the image it was flashed with) runs on the virtual card
(carecard.tools.vcard.sim) with the elder's day: a shipped scenario moved to the elder's home.

Alerts are the receiver's own: `carecard receive` and its alert engine run on the village's
virtual clock (`--simulation-clock`, host/simclock.py), and the cards play in lockstep on it
(tools/vcard/lockstep.py), so the engine raises, escalates and resolves alerts, and sends its
check-in prompts to the cards, at the virtual times they would have had. A card whose day is
over is taken out of the registry (`devices remove`), as a card handed back would be, so its
silence afterwards is not an alert; its alerts still open are closed with the reason "removed".
The alerts shown are the engine's commits, read from the store.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from carecard.tools.vcard import scenario as scenarios
from carecard.tools.vcard import sim
from carecard.tools.vcard.lockstep import Lockstep, LockstepError

DEMO_DIR = Path(__file__).resolve().parent / "demo"
SHEET = DEMO_DIR / "village.csv"
IMEI_BODY = 86888800000000        # the demo cards' IMEIs: this body plus the row
QUANTUM_S = 30.0                  # virtual seconds the cards play between two engine steps
CLOCK_FILE = "simulation-clock"   # the village's virtual clock, in the data folder


@dataclass(frozen=True)
class DemoDay:
    elder: str                 # the name on the sheet
    scenario: str              # a shipped scenario
    story: str
    incident: str | None       # the step that starts what the alerts are about
    until: str | None = None   # the full demo stops here (None: the scenario's end)
    quick: str | None = None   # the short demo (make test); None: not in it
    title: str = ""            # the day in a few words (the summary's day column)


DAYS = (
    DemoDay("林秀英", "normal-day", "an ordinary day: the market, a call to her son, a nap", None,
            quick=None, title="ordinary day"),
    DemoDay("陈阿婆", "fall-at-home", "falls in the kitchen at 10:20 and lies still", "fall",
            quick="5h", title="fall at home"),
    DemoDay("王大爷", "sos-no-answer-then-voicemail",
            "holds SOS; the first son does not answer, the second's voicemail does", "hold",
            quick="40m", title="SOS"),
    DemoDay("黄奶奶", "coverage-hole-6h", "six hours without coverage in the hills, then back",
            "coverage", until="8h", title="coverage hole"),
    DemoDay("张爷爷", "battery-rundown", "starts at 42 % and is never charged", "battery_low",
            until="30h", title="battery low"),
    DemoDay("李奶奶", "left-on-table", "leaves the card on the kitchen table all day", "carry",
            quick="3h40m", title="card on table"),
)


class DemoError(RuntimeError):
    """The demo could not run; the message says what failed and where its logs are."""


@dataclass
class DemoCard:
    day: DemoDay
    elder: Any                           # host.factory.sheet.Elder
    scenario: scenarios.Scenario
    folder: Path
    device: int = 0
    until_s: float | None = None
    result: sim.SimResult | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    error: str | None = None

    @property
    def slug(self) -> str:
        return f"{self.device}-{self.scenario.name}"

    def incident_ms(self) -> int | None:
        """When what the alerts are about began (virtual ms), or None."""
        if self.result is None or self.day.incident is None:
            return None
        if self.day.incident == "battery_low":
            low = [e for e in self.result.events if e["kind"] == "power"]
            return low[0]["virtual_ms"] if low else None
        for e in self.result.timeline:
            if e["kind"] == "step" and e["do"] == self.day.incident and \
                    (self.day.incident != "coverage" or e.get("up") is False) and \
                    (self.day.incident != "carry" or e.get("state") == "table"):
                return e["t_ms"]
        return None


def moved_to(sc: scenarios.Scenario, lat: float | None, lon: float | None) -> scenarios.Scenario:
    """The scenario with every place moved so that its home is at (lat, lon)."""
    if lat is None or lon is None:
        return sc
    home = sc.places[sc.home]
    dlat, dlon = lat - home.lat, lon - home.lon
    places = {name: replace(p, lat=p.lat + dlat, lon=p.lon + dlon) for name, p in sc.places.items()}
    return replace(sc, places=places)


class Village:
    def __init__(self, data_dir: Path, *, quick: bool = False, quantum_s: float = QUANTUM_S) -> None:
        self.data_dir = data_dir
        self.quick = quick
        self.quantum_s = quantum_s
        self.receiver: sim.ReceiverProcess | None = None
        self.clock: Any = None                 # host.simclock.SimulationClock
        self.start_unix = 0.0
        self.cards: list[DemoCard] = []
        self.records = data_dir / "provisioning.jsonl"
        self.settings_path: Path | None = None
        self._alerts_seen: set[Any] = set()     # alert event ids given to their cards
        self._log: Any = None                  # the event log, read for its head and sink cursors
        self._delivered = 0                    # the sinks had the log up to here at the last look

    def chosen(self, days: tuple[DemoDay, ...] = DAYS) -> list[DemoDay]:
        return [d for d in days if not self.quick or d.quick is not None]

    # ---- the receiver -----------------------------------------------------------------------
    def start_receiver(self, days: tuple[DemoDay, ...] = DAYS) -> int:
        """`carecard receive` on the village's virtual clock, set to the earliest day's start."""
        from carecard.host.simclock import SimulationClock

        self.start_unix = min(scenarios.load(scenarios.find(d.scenario)).start_unix
                              for d in self.chosen(days))
        path = self.data_dir / CLOCK_FILE
        self.clock = SimulationClock.create(path, self.start_unix)
        self.receiver = sim.ReceiverProcess(self.data_dir, simulation_clock=path)
        assert self.receiver.port is not None
        return self.receiver.port

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.receiver = None
        if self.clock is not None:
            self.clock.close()
            self.clock = None

    # ---- provisioning -----------------------------------------------------------------------
    def provision(self, sheet: Path = SHEET, days: tuple[DemoDay, ...] = DAYS,
                  on_card: Callable[[DemoCard], None] | None = None) -> Path:
        """Flash and provision one virtual board per day's elder from the sheet (its server
        column pointed at this receiver); returns the sheet copy used."""
        from carecard.host.factory.batch import provision_batch
        from carecard.host.factory.flash import ImageCache, flash_device
        from carecard.host.factory.link import DeviceError
        from carecard.host.factory.provision import settings_path_of
        from carecard.host.factory.sheet import SheetError, read_sheet
        from carecard.host.receiver.registry import RegistryError, make_imei
        from carecard.tools.vcard.modem_sim import Identity
        from carecard.tools.vcard.pty_modem import PtyModem
        from carecard.tools.vdevice import DEFAULT_ROMFS_SIZE, VirtualDevice

        assert self.receiver is not None and self.receiver.port is not None
        lines = sheet.read_text(encoding="utf-8").splitlines()
        header = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
        column = lines[header].split(",").index("server")
        for i in range(header + 1, len(lines)):
            cells = lines[i].split(",")
            if len(cells) > column and not lines[i].startswith("#"):
                cells[column] = f"127.0.0.1:{self.receiver.port}"
                lines[i] = ",".join(cells)
        copy = self.data_dir / "village.csv"
        copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            elders = {e.name: e for e in read_sheet(copy)}
        except SheetError as exc:
            raise DemoError(f"the demo sheet {sheet}: " + "; ".join(str(p) for p in exc.problems)) from None
        chosen = self.chosen(days)
        cards_dir = self.data_dir / "cards"
        for n, day in enumerate(chosen):
            if day.elder not in elders:
                raise DemoError(f"the demo sheet {sheet} has no elder named {day.elder}")
            elder = elders[day.elder]
            sc = moved_to(scenarios.load(scenarios.find(day.scenario)), elder.home_lat, elder.home_lon)
            folder = cards_dir / f"card{n + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            until = day.quick if self.quick else day.until
            card = DemoCard(day, elder, sc, folder,
                            until_s=scenarios.parse_duration(until, "until") if until else None)
            self.cards.append(card)
        image = ImageCache().get(None)
        # each board with its simulated A7670 on UART 1: the IMEI and ICCID come from the modem
        modems = [PtyModem(powered=True, identity=Identity(
            imei=str(make_imei(IMEI_BODY + card.elder.row)), iccid=f"898600{IMEI_BODY + card.elder.row:014d}"))
            for card in self.cards]
        boards = []
        try:
            # with a ROMFS partition, as a card's flash has: the flash deploys the libraries there
            boards = [VirtualDevice(card.folder, uarts={1: modem.port}, romfs_size=DEFAULT_ROMFS_SIZE).start()
                      for card, modem in zip(self.cards, modems)]
            with ThreadPoolExecutor(3) as pool:
                list(pool.map(lambda board: flash_device(board.port, image), boards))
            # what `carecard provision --port ...` runs, one card per port
            outcomes = provision_batch([(board.port, card.elder) for board, card in zip(boards, self.cards)],
                                       data_dir=self.data_dir, records=self.records)
        except DeviceError as exc:
            raise DemoError(f"flashing a virtual card failed: {exc}") from None
        except RegistryError as exc:
            raise DemoError(f"registering the virtual cards failed: {exc}") from None
        finally:
            for board in boards:
                board.stop()
            for modem in modems:
                modem.close()
        failed = [o for o in outcomes if o.error is not None]
        if failed:
            raise DemoError(f"provisioning a virtual card failed: {failed[0].error}")
        for card, outcome in zip(self.cards, outcomes):
            assert outcome.result is not None
            card.device = outcome.result.identity.imei
            if on_card is not None:
                on_card(card)
        self.settings_path = settings_path_of(self.records)
        return copy

    def end_unix(self) -> float:
        """When the last card's day ends (unix s)."""
        return max(c.scenario.start_unix + (c.until_s if c.until_s is not None else c.scenario.duration_s)
                   for c in self.cards)

    # ---- the days ---------------------------------------------------------------------------
    def run(self, on_event: Callable[[DemoCard, dict[str, Any]], None] | None = None,
            on_progress: Callable[[DemoCard, int, int], None] | None = None,
            on_alert: Callable[[DemoCard, dict[str, Any]], None] | None = None,
            on_time: Callable[[float], None] | None = None) -> None:
        """Every card's day at once against the receiver, in lockstep on the village's virtual
        clock. on_alert: each alert event the engine commits (a card's, as it happens); on_time:
        the village's virtual time (unix s) at the end of each quantum."""
        assert self.receiver is not None and self.receiver.port is not None and self.clock is not None
        port = self.receiver.port

        def quantum(t: float) -> None:
            # the engine has stepped to t: its alerts (times up to t) are in the log; once the
            # sink has them, show them
            self._wait_for_sinks()
            self._read_alerts(on_alert, since=t - 3 * self.quantum_s)
            if on_time is not None:
                on_time(t)

        lock = Lockstep(self.start_unix, self.quantum_s, self.clock, on_quantum=quantum)
        for card in self.cards:
            lock.join(card.device)

        def one(card: DemoCard) -> None:
            options = sim.SimOptions(
                receiver=("127.0.0.1", port), data_dir=self.data_dir, card_dir=card.folder,
                until_s=card.until_s,
                on_event=(lambda e: on_event(card, e)) if on_event else None,
                on_progress=(lambda now, end: on_progress(card, now, end)) if on_progress else None,
                lockstep=lock, member=card.device, on_end=lambda now_ms: self._retire(card, now_ms))
            try:
                card.result = sim.run_scenario(card.scenario, options)
            except sim.SimError as exc:
                card.error = str(exc)
            finally:
                lock.leave(card.device)   # (run_scenario has left already unless it failed first)

        pool = ThreadPoolExecutor(len(self.cards) or 1)
        try:
            try:
                for future in [pool.submit(one, card) for card in self.cards]:
                    future.result()
            except BaseException:   # Ctrl-C: every card stops at its next quantum, not at its day's end
                lock.stop("the demo was interrupted")
                raise
            finally:
                pool.shutdown(wait=True)
            self._finish_run(lock, end=max(lock.limit, self.end_unix()), on_alert=on_alert)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def _finish_run(self, lock: Any, end: float,
                    on_alert: Callable[[DemoCard, dict[str, Any]], None] | None) -> None:
        # the engine steps once more at the end of the last day: its alerts up to then
        assert self.clock is not None and self.receiver is not None
        self.clock.set_receiver(end)
        try:
            lock.step_engine(end)
        except LockstepError as exc:
            raise DemoError(f"{exc}; its log: {self.receiver.log_path}") from None
        self._wait_for_sinks()
        self._read_alerts(on_alert)
        for card in self.cards:
            card.alerts.sort(key=lambda a: (a.get("time") or "", a.get("id") or ""))

    def _retire(self, card: DemoCard, now_ms: int) -> None:
        """The card's day is over: out of the registry (`carecard devices remove`), at that
        virtual moment, so its silence from now on is not an alert."""
        from carecard.host.paths import ingest_db_path
        from carecard.host.receiver.registry import RegistryError, remove_device
        from carecard.host.storage import StoreError
        from carecard.host.storage.sqlite.store import SQLiteStore

        at = card.scenario.start_unix + now_ms / 1000
        try:
            store = SQLiteStore(ingest_db_path(self.data_dir), readonly_lookups=False)
            try:
                remove_device(store, self.data_dir, card.device, now=at)
            finally:
                store.close()
        except (RegistryError, StoreError) as exc:
            card.error = card.error or f"taking the card out of the registry failed: {exc}"

    def _read_alerts(self, on_alert: Callable[[DemoCard, dict[str, Any]], None] | None,
                     since: float | None = None) -> None:
        """The alert events the engine committed (as the SQLite sink stored them: the event log
        prunes them once delivered) since `since` (unix s) that were not seen yet, to their cards."""
        from carecard.host.export import QueryError, iter_events, open_query_store_readonly

        by_device = {str(c.device): c for c in self.cards}
        # called at a quantum's end (the lockstep's, one at a time) and after the cards' threads
        try:
            conn = open_query_store_readonly(self.data_dir)
        except QueryError:
            return   # nothing stored yet
        try:
            for event in iter_events(conn, kind="alert", since=since):
                card = by_device.get(str(event.get("device")))
                if card is None or event.get("id") in self._alerts_seen:
                    continue
                self._alerts_seen.add(event.get("id"))
                card.alerts.append(event)
                if on_alert is not None:
                    on_alert(card, event)
        finally:
            conn.close()

    def _wait_for_sinks(self, timeout_s: float = 30.0) -> None:
        """When the event log grew since the last look: until the sinks have all of it (the
        timeline shows each quantum's alerts before the next quantum's card events)."""
        import time

        from carecard.host.paths import ingest_db_path
        from carecard.host.storage.sqlite.eventlog import SQLiteEventLog

        if self._log is None:
            self._log = SQLiteEventLog(ingest_db_path(self.data_dir))
        head = self._log.last_seq()
        if head <= self._delivered:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            cursors = self._log.cursors()
            if cursors and min(cursors.values()) >= head:
                self._delivered = head
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the receiver's sinks did not deliver the events within {timeout_s:.0f} s; "
                                f"its log: {self.data_dir / 'receiver.log'}")
            time.sleep(0.002)

    # ---- afterwards -------------------------------------------------------------------------
    def finish(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        for card in self.cards:
            if card.result is None:
                continue
            events = out_dir / f"{card.slug}-events.jsonl"
            virtual = sim.virtual_events(card.result)
            events.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in virtual),
                              encoding="utf-8")
            card.files["events"] = events
            card.files.update(export_tracks(self.data_dir, card, out_dir))
            from carecard.tools.vcard import demo_pictures

            card.files["track_png"] = demo_pictures.track_picture(card, out_dir / f"{card.slug}-track.png")
            card.files["day_png"] = demo_pictures.day_strip(card, out_dir / f"{card.slug}-day.png")


def export_tracks(data_dir: Path, card: DemoCard, out_dir: Path) -> dict[str, Path]:
    """The card's track as GeoJSON and GPX from what the receiver stored."""
    from carecard.host.export import QueryError, export_track

    files = {}
    for fmt, suffix in (("geojson", "geojson"), ("gpx", "gpx")):
        try:
            text, _count = export_track(data_dir, str(card.device), fmt)
        except QueryError:
            continue
        path = out_dir / f"{card.slug}.{suffix}"
        path.write_text(text, encoding="utf-8")
        files[fmt] = path
    return files


def local_time(card: DemoCard, virtual_ms: float) -> datetime:
    sc = card.scenario
    return datetime.fromtimestamp(sc.start_unix + virtual_ms / 1000,
                                  timezone(timedelta(minutes=15 * sc.tz_quarters)))


def alert_ms(card: DemoCard, alert: dict[str, Any]) -> float:
    """An alert event's time as virtual ms of the card's day."""
    from carecard.host.timefmt import parse_iso_utc

    return (parse_iso_utc(alert["time"] or alert["received_at"]) - card.scenario.start_unix) * 1000


def summary_rows(cards: list[DemoCard]) -> list[dict[str, Any]]:
    """Per card: frames, calls, alerts (kinds, first one against the incident), battery days."""
    rows = []
    for card in cards:
        r = card.result
        if r is None:
            rows.append({"card": card, "error": card.error})
            continue
        kinds: dict[str, int] = {}
        for e in r.events:
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
        raised = [a for a in card.alerts if a["data"]["details"].get("step") in ("raised", "checkin")]
        first = min((alert_ms(card, a) for a in raised), default=None)
        incident = card.incident_ms()
        delay = None if first is None or incident is None else (first - incident) / 60_000
        rows.append({
            "card": card, "frames": len(r.events), "calls": kinds.get("call", 0),
            "alerts": sorted({a["data"]["alert"] for a in card.alerts}),
            "alert_steps": len(card.alerts),
            "first_alert": None if first is None else local_time(card, first),
            "incident": None if incident is None else local_time(card, incident),
            "delay_min": delay,
            "days_per_charge": r.energy.get("days_per_charge"),
            "checks": r.checks,
        })
    return rows


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    k = math.pi / 180
    x = (lon2 - lon1) * k * math.cos((lat1 + lat2) / 2 * k)
    y = (lat2 - lat1) * k
    return 6_371_000 * math.hypot(x, y)
